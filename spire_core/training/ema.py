"""Exponential moving average of the adaptor's weights (float32 shadow copies on the training device)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """``shadow <- shadow + (1 - d) * (param - shadow)`` after each update, ``d = min(decay, (1+n)/(10+n))``.

    Attributes:
        names: parameter names (``module.named_parameters()`` order).
        decay: the target decay.
        updates: how many updates were applied (n).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses (warm-up: small at first, ``decay`` in the long run)."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow weights towards the current parameters."""
        weight = 1.0 - self.current_decay()
        current = [p.detach().float() for p in self.params]
        torch._foreach_lerp_(self.shadow, current, weight)
        self.updates += 1

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Parameter name -> shadow tensor (for checkpoints)."""
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore shadows written by ``state_tensors`` (strict on names and shapes)."""
        missing = [name for name in self.names if name not in tensors]
        extra = sorted(set(tensors) - set(self.names))
        if missing or extra:
            raise ValueError(f"EMA state does not match the adaptor: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, shadow in zip(self.names, self.shadow):
            if tensors[name].shape != shadow.shape:
                shapes = f"{tuple(tensors[name].shape)}, expected {tuple(shadow.shape)}"
                raise ValueError(f"EMA state {name} has shape {shapes}")
            shadow.copy_(tensors[name])
        self.updates = int(updates)

    @torch.no_grad()
    def copy_to_module(self) -> None:
        """Load the EMA weights into the module's parameters for good (training is over; nothing to swap back)."""
        for parameter, shadow in zip(self.params, self.shadow):
            parameter.copy_(shadow)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the module's parameters hold the EMA weights; the trained weights come back on exit.

        The tensors are exchanged, not copied, so no extra memory is used (parameters are float32 master
        weights, as the shadows)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            if p.dtype != self.shadow[i].dtype or p.device != self.shadow[i].device:
                where = f"{self.names[i]} is {p.dtype} on {p.device}"
                raise RuntimeError(f"EMA swap needs float32 parameters on the shadows' device; {where}")
            p.data, self.shadow[i] = self.shadow[i], p.data
