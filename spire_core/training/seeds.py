"""Counter-based randomness: every random draw of training is a pure function of (seed, purpose, position).

A sample at position k of the data stream always gets the same crop, caption, degradation, prompt dropout,
noise and timestep, whichever process, worker or resumed run draws it. The resumable "RNG state" of a run is
therefore its seed and its data position; nothing depends on the global RNG.
"""

from __future__ import annotations

import hashlib

import torch

SEED_BITS = 63
"""Derived seeds are below 2**63 (``torch.Generator.manual_seed`` takes them on every platform)."""


def seed_for(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints and strings (stable across runs, processes and platforms)."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def generator_for(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed_for(*parts)``."""
    return torch.Generator().manual_seed(seed_for(*parts))
