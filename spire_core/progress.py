"""Progress bars for long work (training, ``python -m spire_core.eval``, the miniature, the benchmarks).

One ``tqdm`` bar per loop, on stderr, shown only where a person is watching:

- ``SPIRE_PROGRESS=0`` (or ``false``, ``no``, ``off``) hides every bar; ``SPIRE_PROGRESS=1`` (or ``true``,
  ``yes``, ``on``) shows them even when stderr is a file or a pipe;
- otherwise a bar shows when stderr is a terminal and the environment variable ``CI`` is unset (or ``""``,
  ``"0"``, ``"false"``), so CI logs and redirected runs stay quiet.

Bars never touch stdout: reports, JSON summaries and the training's JSON-lines log are byte-for-byte the same with
and without them. Lines printed to stdout while a bar is shown go through ``echo``, log records through
``logging_to_bars``, so that neither tears the bar. ``tqdm`` (a ComfyUI requirement) is imported when a bar is
made, not with this module.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

ENV_VAR = "SPIRE_PROGRESS"
"""Environment variable that forces the bars on ("1") or off ("0"); unset: on when stderr is a terminal."""

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def progress_enabled(stream: Any = None) -> bool:
    """Whether a bar would show now (see the module docstring for the rules).

    Args:
        stream: the stream the bar would write to (default ``sys.stderr``).

    Raises:
        ValueError: ``SPIRE_PROGRESS`` holds something other than 0/1 (false/true, no/yes, off/on).
    """
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in _ON:
        return True
    if forced in _OFF:
        return False
    if forced:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not understood; use 1 to show progress bars, 0 to hide")
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool | None = None,
    **options: Any,
) -> Any:
    """A ``tqdm`` bar on stderr (ASCII, so any console shows it), or a disabled one that draws nothing.

    Use it like ``tqdm``: iterate over it, or call ``update``/``set_postfix_str`` and ``close`` (or use it as a
    context manager). A disabled bar passes ``iterable`` through unchanged and counts nothing.

    Args:
        iterable: what to iterate over (``None``: update by hand).
        total: expected count (default ``len(iterable)`` when it has one); ``None`` shows count and rate only.
        desc: short label in front of the bar ("train", "score").
        unit: what one count is ("step", "image").
        enabled: ``True`` shows the bar, ``False`` hides it (e.g. on every process but the main one), ``None``
            decides by ``progress_enabled``.
        **options: further ``tqdm`` arguments (``initial``, ``leave``, ...).

    Returns:
        The ``tqdm`` object.
    """
    from tqdm import tqdm

    show = progress_enabled() if enabled is None else bool(enabled)
    options.setdefault("ascii", True)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show, file=sys.stderr, **options)


def echo(text: str) -> None:
    """Print ``text`` and a newline to stdout, lifting any bar shown on the same terminal out of the way.

    The bytes written to stdout are the ones ``print(text)`` writes.
    """
    if "tqdm" not in sys.modules:  # no bar was ever made: nothing to lift
        print(text)
        return
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)


@contextmanager
def logging_to_bars(bar: Any) -> Iterator[None]:
    """While ``bar`` is shown, send the root logger's console records through ``tqdm.write`` (same stream, same
    format, same filters) so that log lines print above the bar instead of through it. Nothing changes for a
    disabled bar, or when the root logger has no handler writing to stdout or stderr."""
    console = [
        handler
        for handler in logging.root.handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
    ]
    if getattr(bar, "disable", True) or not console:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield
