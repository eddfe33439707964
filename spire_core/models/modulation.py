"""SPIRE's fusion of an adaptor output with a frozen UNet feature, the one place the formula lives.

Plain torch (no diffusers): the diffusers hooks (``fusion.py``) and the ComfyUI UNet patch
(``nodes/spire_control.py``) both call :func:`modulate`.
"""

from __future__ import annotations

import torch


def modulate(
    feature: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, strength: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """``feature * (1 + strength*gamma) + strength*beta`` (SPIRE's fusion; exact identity for zero gamma/beta).

    Args:
        feature: (B, C, H, W) frozen UNet feature.
        gamma, beta: (B or 1, C, H, W) from the adaptor; cast to ``feature``'s dtype and device.
        strength: scalar, or a tensor broadcastable to (B, 1, 1, 1).
    """
    gamma = gamma.to(dtype=feature.dtype, device=feature.device)
    beta = beta.to(dtype=feature.dtype, device=feature.device)
    return feature * (1 + strength * gamma) + strength * beta
