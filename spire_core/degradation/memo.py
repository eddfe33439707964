"""Memoisation bounded by bytes, for the degradation operators' precomputed tables.

``functools.lru_cache`` bounds a cache by its number of entries, which says nothing about memory
when an entry's size depends on its arguments: a resampling table for a 4096 px axis is a thousand
times larger than one for 64 px, and a long-running server that degrades images of random sizes
adds a new entry with nearly every call. ``byte_bounded`` keeps the most recently used entries
whose tensors together hold at most ``max_bytes``, and never stores an entry larger than that.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch


class CacheInfo(NamedTuple):
    """What a byte-bounded cache holds: entries, the bytes of their tensors, and the bound."""

    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (a tensor, or tuples/lists of them and of plain values,
    which count as nothing). Views count their own extent, not their storage's."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def byte_bounded(max_bytes: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: memoise a function of hashable positional arguments, least recently used first
    out, keeping the cached results' tensors under ``max_bytes`` in all. The wrapped function has
    ``cache_info()`` and ``cache_clear()`` like ``functools.lru_cache``'s. Thread-safe; two threads
    missing the same key at once both compute it (the result is the same)."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        lock = threading.Lock()
        state = {"bytes": 0, "hits": 0, "misses": 0}

        @functools.wraps(function)
        def wrapper(*args: Any) -> Any:
            with lock:
                found = entries.get(args)
                if found is not None:
                    entries.move_to_end(args)
                    state["hits"] += 1
                    return found[0]
                state["misses"] += 1
            value = function(*args)
            size = tensor_bytes(value)
            if size > max_bytes:
                return value  # larger than the whole cache: computed each time, never kept
            with lock:
                if args not in entries:
                    entries[args] = (value, size)
                    state["bytes"] += size
                while state["bytes"] > max_bytes:
                    _, (_, dropped) = entries.popitem(last=False)
                    state["bytes"] -= dropped
            return value

        def cache_info() -> CacheInfo:
            with lock:
                return CacheInfo(state["hits"], state["misses"], len(entries), state["bytes"], max_bytes)

        def cache_clear() -> None:
            with lock:
                entries.clear()
                state.update(bytes=0, hits=0, misses=0)

        wrapper.cache_info = cache_info  # type: ignore[attr-defined]
        wrapper.cache_clear = cache_clear  # type: ignore[attr-defined]
        return wrapper

    return decorate
