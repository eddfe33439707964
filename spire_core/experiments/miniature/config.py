"""What decides a miniature run: its config and the arms it compares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...models import NUMERIC_TOKENS_DEFAULT

SAMPLES_DIR = Path(__file__).resolve().parents[3] / "docs" / "samples"
SAMPLE_PHOTOS = ("astronaut.png", "coffee.png")

ARMS: dict[str, tuple[str, int]] = {
    "modulation_numeric": ("modulation", NUMERIC_TOKENS_DEFAULT),
    "modulation_clip": ("modulation", 0),
    "additive_numeric": ("additive", NUMERIC_TOKENS_DEFAULT),
}
"""Arm -> (fusion, numeric tokens). ``modulation_numeric`` is the default recipe."""

DEFAULT_ARM = "modulation_numeric"


@dataclass
class MiniatureConfig:
    """Everything that decides a miniature run (recorded in the JSON).

    Attributes:
        budget_minutes: wall-clock budget: training stops at ``adaptors_until`` of it, evaluation (about four
            minutes with the defaults) follows.
        seed: every random draw is a function of it (``seeds``).
        preset: degradation preset of the backbone's degraded half, the adaptor training and the held-out
            restoration (default ``control``: Gaussian blur and Gaussian noise).
        crop: crop size in pixels (latents are crop/8).
        holdout: width in pixels of the right-hand strip of each photo kept for evaluation.
        codec_fit_crops: random training crops the codecs are fitted on.
        backbone_batch, backbone_lr, backbone_steps: backbone training (``None`` steps: until its deadline).
        backbone_degraded: share of each backbone batch degraded by the preset (the rest clean).
        adaptor_batch, adaptor_lr, adaptor_steps: per adaptor, identical for every arm.
        arms: which of ``ARMS`` to train (default all three).
        prediction_type: what the backbone (and so the adaptors) predict: ``"v_prediction"`` or ``"epsilon"``.
        ema_decay: EMA of the backbone and of each adaptor (evaluation uses the EMA weights).
        max_grad_norm: gradient clipping (adaptors).
        backbone_until, adaptors_until: phase deadlines as fractions of the budget (cumulative).
        eval_crops: held-out crops used (``None``: all of them, 28 with the defaults).
        ddim_steps: sampling steps of every restoration.
        control_noise, control_blur: present levels of the control benchmark's ladders.
        device: torch device.
        images: the photos to crop (default: the two bundled samples).
    """

    budget_minutes: float = 30.0
    seed: int = 0
    preset: str = "control"
    crop: int = 64
    holdout: int = 128
    codec_fit_crops: int = 1024
    backbone_batch: int = 32
    backbone_lr: float = 2e-3
    backbone_steps: int | None = None
    backbone_degraded: float = 0.5
    adaptor_batch: int = 8
    adaptor_lr: float = 1e-3
    adaptor_steps: int | None = None
    arms: tuple[str, ...] = tuple(ARMS)
    prediction_type: str = "v_prediction"
    ema_decay: float = 0.99
    max_grad_norm: float = 1.0
    backbone_until: float = 0.27
    adaptors_until: float = 0.83
    eval_crops: int | None = None
    ddim_steps: int = 25
    control_noise: float = 0.12
    control_blur: float = 2.0
    device: str = "cpu"
    images: tuple[str, ...] = field(default_factory=lambda: tuple(str(SAMPLES_DIR / n) for n in SAMPLE_PHOTOS))

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"miniature arms {unknown or '()'} unknown; expected some of {tuple(ARMS)}")
