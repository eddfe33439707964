"""The numeric side channel: a restoration prompt's parsed numbers as extra cross-attention tokens.

``NumericTokens`` maps the fixed features of ``spire_core.prompt.restoration_features`` (N, F) through a small MLP
to (N, K, D) tokens, which ``numeric_context`` appends behind the restoration prompt's CLIP tokens in the
adaptor's cross-attention context. The MLP's output layer starts at zero, so a fresh channel adds zero tokens and a
fresh adaptor stays an exact identity on the UNet (its modulation heads are zero too). This module is the one
definition of the channel: the diffusers adaptor holds it, and the ComfyUI adaptor holds the same class built with
ComfyUI's ``comfy.ops`` layers (``linear=``), so both compute the same tokens from the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..prompt.numeric import NUMERIC_FEATURES

MAX_NUMERIC_TOKENS = 64


class NumericTokens(nn.Module):
    """Features -> ``tokens`` cross-attention tokens: ``Linear(F, D) -> SiLU -> Linear(D, tokens * D)``, the last
    layer zero-initialised.

    Args:
        tokens: K, the number of tokens appended (1 .. ``MAX_NUMERIC_TOKENS``).
        dim: D, the adaptor's cross-attention width (768 for SD1, 1024 for SD2).
        features: F, the feature length (``NUMERIC_FEATURES``).
        linear: the linear layer class (``torch.nn.Linear``, or ComfyUI's ``operations.Linear``).
        dtype, device: passed to the layers.
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        features: int = NUMERIC_FEATURES,
        linear: type[nn.Module] = nn.Linear,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= tokens <= MAX_NUMERIC_TOKENS:
            raise ValueError(f"numeric tokens must be in 1..{MAX_NUMERIC_TOKENS}, got {tokens}")
        self.tokens, self.dim, self.features = tokens, dim, features
        self.fc1 = linear(features, dim, dtype=dtype, device=device)
        self.act = nn.SiLU()
        self.fc2 = linear(dim, tokens * dim, dtype=dtype, device=device)
        if not self.fc2.weight.is_meta:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) features -> (N, K, D) tokens, in the layers' dtype."""
        if features.dim() != 2 or features.shape[1] != self.features:
            raise ValueError(
                f"numeric features have shape {tuple(features.shape)}; expected (N, {self.features}) from "
                "spire_core.prompt.restoration_features"
            )
        hidden = self.act(self.fc1(features))
        return self.fc2(hidden).view(features.shape[0], self.tokens, self.dim)


def numeric_context(module: NumericTokens | None, context: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """The adaptor's cross-attention context: the restoration prompt's CLIP tokens, then the numeric tokens.

    Args:
        module: the adaptor's numeric channel, or ``None`` (no channel: ``context`` is returned as is).
        context: (B, T, D) CLIP hidden states of the restoration prompt.
        features: (B or 1, F) features of the same prompts; ``None``: the prompts' numbers are unknown (as for
            text encoded without its features), which the channel reads as unparsed text.

    Returns:
        (B, T + K, D) in ``context``'s dtype and device.
    """
    if module is None:
        return context
    batch = context.shape[0]
    if features is None:
        from ..prompt.numeric import restoration_features

        features = restoration_features([None])
    features = features.to(device=context.device, dtype=context.dtype)  # the compute dtype
    if features.shape[0] == 1 and batch != 1:
        features = features.expand(batch, -1)
    if features.shape[0] != batch:
        raise ValueError(f"{features.shape[0]} numeric feature rows for a restoration context of batch {batch}")
    tokens = module(features).to(context.dtype)
    return torch.cat([context, tokens], dim=1)


__all__ = ["MAX_NUMERIC_TOKENS", "NumericTokens", "numeric_context"]
