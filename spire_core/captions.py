"""Caption files shared by training and evaluation: the COCO captions JSON layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

COCO_LAYOUT = '{"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}'


def read_coco_captions(
    path: str | os.PathLike, error: type[Exception] = ValueError, option: str = "captions file"
) -> dict[str, list[str]]:
    """``file_name`` (as the JSON gives it) -> captions in file order, stripped, empty ones dropped.

    Args:
        path: a COCO captions JSON.
        error: the exception type to raise (the caller's own, so its handlers catch it).
        option: how the caller's user named this file, for the message (e.g. ``"--captions"``).

    Raises:
        error: no such file, or not that layout.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{option} {path} does not exist; expected a COCO captions JSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {image["id"]: image["file_name"] for image in data["images"]}
        captions: dict[str, list[str]] = {}
        for annotation in data["annotations"]:
            text = str(annotation["caption"]).strip()
            if text and annotation["image_id"] in names:
                captions.setdefault(names[annotation["image_id"]], []).append(text)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise error(
            f"{path} is not a COCO captions JSON ({type(exc).__name__}: {exc}); expected {COCO_LAYOUT}"
        ) from None
    return captions
