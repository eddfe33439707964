"""Scratch memory of the CPU workers: per-thread reusable buffers, huge pages, and handing the C heap back.

A buffer freed to the C allocator is often returned to the OS and page-faulted in again on its next use, which
costs more than the work done in it; so each CPU worker keeps its large temporaries (``scratch_tensor``) between
operations, and ``degrade`` trims them (``trim_scratch``) and the C heap (``release_free_heap``) after a call.
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
import weakref
from functools import lru_cache

import torch

_SCRATCH = threading.local()
_SCRATCH_LOCK = threading.Lock()


class _Buffers(dict):
    """One thread's scratch: ``(slot,)`` -> byte buffer, and ``(slot, dtype, shape)`` -> a view of it.
    Compared and hashed by identity (it lives in a WeakSet)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__


_SCRATCH_DICTS: weakref.WeakSet[_Buffers] = weakref.WeakSet()
"""Every live thread's scratch (a thread's goes when the thread ends)."""

SCRATCH_KEEP_BYTES = 64 * 2**20
"""Scratch memory a thread keeps once a ``degrade`` call is over (about 25 MB serve 512 x 512
training crops); a thread holding more (after a larger image) lets it go (``trim_scratch``)."""


def enable_scratch() -> None:
    """Let the calling thread keep its large temporaries between operations (see ``scratch_tensor``).

    For the CPU workers of ``degrade``: a buffer freed back to the C allocator is often handed back
    to the OS and page-faulted in again on its next use, which costs more than the work done in it.
    The buffers go with the thread, or at ``trim_scratch``."""
    if not hasattr(_SCRATCH, "buffers"):
        _SCRATCH.buffers = _Buffers()
        with _SCRATCH_LOCK:
            _SCRATCH_DICTS.add(_SCRATCH.buffers)


def trim_scratch(keep_bytes: int = SCRATCH_KEEP_BYTES) -> None:
    """Drop the scratch buffers of every thread that holds more than ``keep_bytes`` (safe while they
    are in use: a buffer lives on until its last view is gone)."""
    with _SCRATCH_LOCK:
        for buffers in list(_SCRATCH_DICTS):
            held = [t for key, t in list(buffers.items()) if len(key) == 1]  # the buffers, not their views
            if sum(t.numel() * t.element_size() for t in held) > keep_bytes:
                buffers.clear()


def scratch_tensor(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor for a temporary that dies within the calling operation: a view of this
    thread's byte buffer ``slot`` when the thread keeps scratch memory (``enable_scratch``), else a
    new tensor. Never return it, nor a view of it.

    Slots are shared by temporaries that are never alive together (one operation runs at a time in
    a thread); the temporaries alive together in an operation take different slots (``SLOTS``)."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None or device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    view = buffers.get((slot, dtype, shape))  # the same request again: the view made last time
    if view is not None:
        return view
    size = math.prod(shape) * dtype.itemsize
    # buffers and views are made as normal tensors whatever the caller's mode: one made under
    # inference_mode could not be written in place by a later call outside it
    with torch.inference_mode(False):
        buffer = buffers.get((slot,))
        if buffer is None or buffer.numel() < size:
            for key in [key for key in buffers if key[0] == slot]:
                del buffers[key]  # the buffer being replaced and its views
            buffer = buffers[(slot,)] = torch.empty(size, dtype=torch.uint8)
            advise_huge_pages(buffer)  # long-lived: fewer TLB misses, and a few faults to fill it
        if len(buffers) > 512:  # many image sizes seen: forget the views (never the buffers)
            for key in [key for key in buffers if len(key) == 3]:
                del buffers[key]
        view = buffers[(slot, dtype, shape)] = buffer[:size].view(dtype).view(shape)
    return view


SLOTS = {
    "a": "reflect-padded image (blur); FFT canvas; noise field; JPEG's 8-bit scaling",
    "b": "row pass (separable blur); FFT spectrum; luma weights, then scaled rates, then bucket indices (noise)",
    "c": "luma, then the ambiguous-bucket mask (Poisson noise)",
    "d": "integer rates (Poisson noise)",
    "e": "uniform draws (Poisson noise)",
}
"""The scratch slots and what takes them, operation by operation."""


_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14


@lru_cache(maxsize=1)
def _madvise() -> object | None:
    """libc's ``madvise`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask Linux to back a large, not yet touched CPU tensor with transparent huge pages (as numpy
    does for its large arrays): its first touch then takes a few dozen page faults instead of one
    per 4 KiB, several times faster. Only the 2 MiB-aligned part of the tensor's own memory is
    advised; a refusal (or another OS) changes nothing."""
    madvise = _madvise()
    if madvise is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // _HUGE_PAGE) * _HUGE_PAGE, end // _HUGE_PAGE * _HUGE_PAGE
    if last > first:
        madvise(first, last - first, _MADV_HUGEPAGE)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@lru_cache(maxsize=1)
def _glibc_heap() -> tuple[object, object] | None:
    """glibc's ``mallinfo2`` and ``malloc_trim`` (Linux with glibc 2.33 or later), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        info, trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):  # another C library (musl), or an older glibc
        return None
    info.argtypes, info.restype = (), _Mallinfo2
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return info, trim


HEAP_KEEP_BYTES = 64 * 2**20
"""Free C-heap memory the process may keep after a ``degrade`` call before it is handed back."""


def release_free_heap(keep_bytes: int = HEAP_KEEP_BYTES) -> int:
    """Hand the C heap's free memory back to the OS when it holds more than ``keep_bytes`` free;
    return the bytes it held free (0 where this cannot be known).

    glibc serves allocations below its mmap threshold (which grows up to 32 MB as large blocks are
    freed) from heaps that it rarely shrinks: after many images of different sizes, a long-running
    process keeps hundreds of MB of freed, fragmented temporaries. ``malloc_trim`` returns their
    pages. Elsewhere (macOS, Windows, musl) the C library manages this itself and nothing is done."""
    heap = _glibc_heap()
    if heap is None:
        return 0
    info, trim = heap
    free = int(info().fordblks)
    if free > keep_bytes:
        trim(0)
    return free
