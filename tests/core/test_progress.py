"""spire_core.progress: bars show on a terminal outside CI (a real pseudo-terminal), hide elsewhere, obey
SPIRE_PROGRESS, count every item, write to stderr only, and let stdout lines and log records through unchanged.
The training loop and the eval commands with bars on and off: tests/core/test_training.py, tests/core/test_eval.py."""

from __future__ import annotations

import logging
import os
import re
import sys

import pytest

from spire_core.progress import ENV_VAR, echo, logging_to_bars, progress, progress_enabled


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    """Each test starts from the automatic rule: neither SPIRE_PROGRESS nor CI set."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("CI", raising=False)


def read_all(fd: int) -> bytes:
    """Everything written to a pseudo-terminal so far (its master side)."""
    import select

    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
def test_a_bar_shows_on_a_terminal_unless_ci_or_spire_progress_say_otherwise(monkeypatch):
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns, as a window has
    terminal = os.fdopen(slave, "w", encoding="utf-8")
    try:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert progress_enabled() is True
        bar = progress(range(5), desc="build", unit="image")
        assert bar.disable is False
        assert sum(bar) == 10  # the items pass through unchanged
        terminal.flush()
        shown = read_all(master).decode("ascii")
        assert bar.n == 5 and re.search(r"build: 100%\|#+\| 5/5 \[", shown), shown

        for value, shows in (("true", False), ("1", False), ("false", True), ("0", True), ("", True)):
            monkeypatch.setenv("CI", value)
            assert progress_enabled() is shows, value
            assert progress(range(3)).disable is (not shows)
        monkeypatch.setenv("CI", "true")
        monkeypatch.setenv(ENV_VAR, "1")  # forced on even in CI
        assert progress_enabled() is True
        monkeypatch.delenv("CI")
        monkeypatch.setenv(ENV_VAR, "0")  # forced off even on a terminal
        assert progress_enabled() is False and progress(range(3)).disable is True
        monkeypatch.delenv(ENV_VAR)
        assert progress(range(3), enabled=False).disable is True  # e.g. every process but the main one
        read_all(master)
    finally:
        terminal.close()
        os.close(master)


def test_no_bar_when_stderr_is_not_a_terminal_unless_forced(monkeypatch, capsys):
    assert sys.stderr.isatty() is False  # captured by pytest: like a file or a pipe
    assert progress_enabled() is False
    bar = progress(list(range(4)), desc="score", unit="image")
    assert list(bar) == [0, 1, 2, 3] and bar.disable is True and bar.n == 0  # a disabled bar counts nothing
    out, err = capsys.readouterr()
    assert out == "" and err == ""

    for value in ("1", "true", "yes", "ON"):
        monkeypatch.setenv(ENV_VAR, value)
        assert progress_enabled() is True, value
    for value in ("0", "false", "no", "Off"):
        monkeypatch.setenv(ENV_VAR, value)
        assert progress_enabled() is False, value
    monkeypatch.setenv(ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="SPIRE_PROGRESS='sometimes' is not understood; use 1"):
        progress_enabled()
    monkeypatch.delenv(ENV_VAR)
    assert progress(range(3), enabled=True).disable is False


def test_a_forced_bar_counts_every_item_and_writes_to_stderr_only(monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, "1")
    items = list(range(7))
    bar = progress(items, desc="score", unit="image")
    assert list(bar) == items
    assert bar.n == 7 and bar.total == 7
    out, err = capsys.readouterr()
    assert out == ""
    assert err.isascii() and re.search(r"score: 100%\|#+\| 7/7 \[", err), err

    # by hand, with a postfix, as the training loop uses it
    with progress(total=3, desc="train", unit="step") as bar:
        for step in range(3):
            bar.set_postfix_str(f"loss={0.5 / (step + 1):.5f}", refresh=False)
            bar.update(1)
    assert bar.n == 3 and bar.postfix == "loss=0.16667"
    out, err = capsys.readouterr()
    assert out == "" and re.search(r"train: 100%\|#+\| 3/3 \[.*loss=0\.16667\]", err), err


def test_echo_and_log_records_pass_a_shown_bar_unchanged(monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, "1")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("LOG %(levelname)s %(message)s"))
    logger = logging.getLogger("spire_core.test_progress")
    logging.root.addHandler(handler)
    try:
        before = list(logging.root.handlers)
        with progress(total=2, desc="restore", unit="image") as bar, logging_to_bars(bar):
            echo("first: restored")
            bar.update(1)
            logger.warning("a warning during the bar")
            assert handler not in logging.root.handlers  # replaced by the bar-aware one while the bar shows
            echo("second: restored")
            bar.update(1)
        assert logging.root.handlers == before  # restored afterwards
    finally:
        logging.root.removeHandler(handler)
    out, err = capsys.readouterr()
    assert out == "first: restored\nsecond: restored\n"  # byte for byte what print() writes
    assert err.count("LOG WARNING a warning during the bar\n") == 1 and "2/2" in err

    # a disabled bar redirects nothing
    monkeypatch.setenv(ENV_VAR, "0")
    logging.root.addHandler(handler)
    try:
        with progress(total=1) as bar, logging_to_bars(bar):
            assert handler in logging.root.handlers
    finally:
        logging.root.removeHandler(handler)
