"""Adaptors that visibly act, for tests: a fresh SPIRE adaptor's heads start at zero (it changes nothing)."""

from __future__ import annotations

import torch


def randomize_heads(adaptor, seed: int, scale: float, attention_gain: float = 1.0):  # noqa: ANN001, ANN201
    """Fill the adaptor's gamma/beta heads, then its numeric channel (if any), with ``scale * N(0, 1)`` drawn from
    ``seed`` (in parameter order), and multiply the trunk's cross-attention projections by ``attention_gain`` (the
    tiny trunks' attention is too weak to tell restoration prompts apart otherwise). Returns the adaptor, changed
    in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*adaptor.head_parameters(), *adaptor.numeric_parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if attention_gain != 1.0:
            for name, p in adaptor.controlnet.named_parameters():
                if ".attn2.to_" in name:
                    p.mul_(attention_gain)
    return adaptor
