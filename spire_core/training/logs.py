"""Training metrics: a JSON-lines file always, TensorBoard events when the package is installed."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("spire_core.training")
"""Human-readable progress messages (the CLI prints INFO and above on the main process)."""


def _tensorboard_writer(folder: Path):  # noqa: ANN202 - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is not installed
        return None
    return SummaryWriter(log_dir=str(folder))


class RunLog:
    """Appends one JSON object per line to ``output_dir/logs/train.jsonl``; mirrors numbers to TensorBoard.

    Every record carries ``time`` (Unix seconds) and ``event`` (``"step"``, ``"data_scan"``,
    ``"data_skipped"``, ``"checkpoint"``, ``"validation"``, ``"export"``, ``"start"``, ``"resume"``, ``"end"``).
    Only the main process writes (``enabled=False`` elsewhere); resumed runs append to the same file.
    """

    def __init__(self, output_dir: str | Path, tensorboard: str = "auto", enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "logs" / "train.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard != "off":
            self.writer = _tensorboard_writer(self.path.parent / "tensorboard")
            if self.writer is None and tensorboard == "on":
                raise RuntimeError("logging.tensorboard='on' but the tensorboard package is not installed")

    def write(self, event: str, **fields: Any) -> None:
        """Append a record; numeric fields of ``step`` records also go to TensorBoard (``train/<name>``)."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "event": event, **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=False) + "\n")
        if self.writer is not None and "step" in fields:
            for name, value in fields.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    if math.isfinite(value):
                        self.writer.add_scalar(f"{event}/{name}", value, fields["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_log(path: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """Records of a ``train.jsonl`` file (only those of ``event`` when given)."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if event is None or r.get("event") == event]
