"""Where degradation work runs: the CPU-or-device decision and the long-lived CPU worker threads.

A CPU batch is degraded item by item on worker threads that keep their scratch memory from call to call
(``scratch.enable_scratch``); tensors on another device take the batched device algorithms.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .scratch import enable_scratch


def cpu_path(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the CPU algorithms (item by item, pocketfft, Pillow, numpy's
    generator) rather than the batched device ones. One predicate, so that tests can run the device
    algorithms on CPU tensors."""
    return device.type == "cpu"


def cpu_workers(n: int) -> int:
    """Threads for ``n`` independent CPU items: no more than the items, the cores or torch's threads."""
    return max(1, min(n, os.cpu_count() or 1, torch.get_num_threads()))


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the parent's worker threads do not exist: start afresh."""
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def start_lanes(workers: int, lane: Callable[[], None]) -> list[Future]:
    """Run ``lane`` ``workers`` times side by side on the long-lived CPU worker threads: a pool of at
    least ``workers`` threads, created on first use and replaced by a larger one when a call wants
    more (work already given to a replaced pool still runs; its threads end after it, and their
    scratch memory with them). The threads keep their scratch memory from call to call
    (``scratch.enable_scratch``)."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:  # held while submitting: no other call can shut this pool down in between
        if _POOL is None or _POOL_SIZE < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="spire-degrade", initializer=enable_scratch
            )
            _POOL_SIZE = workers
        return [_POOL.submit(lane) for _ in range(workers)]
