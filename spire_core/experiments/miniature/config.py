"""What decides a miniature run: its config and the arms it compares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ...eval.control import labels_are_distinct
from ...models import NUMERIC_TOKENS_DEFAULT
from ...models.config import trunk_channels

SAMPLES_DIR = Path(__file__).resolve().parents[3] / "docs" / "samples"
SAMPLE_PHOTOS = ("astronaut.png", "coffee.png")

ARMS: dict[str, tuple[str, int, str]] = {
    "modulation_numeric": ("modulation", NUMERIC_TOKENS_DEFAULT, "full"),
    "modulation_clip": ("modulation", 0, "full"),
    "additive_numeric": ("additive", NUMERIC_TOKENS_DEFAULT, "full"),
    "modulation_numeric_half": ("modulation", NUMERIC_TOKENS_DEFAULT, "half"),
    "modulation_numeric_quarter": ("modulation", NUMERIC_TOKENS_DEFAULT, "quarter"),
}
"""Arm -> (fusion, numeric tokens, trunk size). ``modulation_numeric`` is the default recipe; the ``_half`` and
``_quarter`` arms are the same recipe with a narrower trunk (``SpireAdaptor.from_unet(trunk=...)``)."""

DEFAULT_ARM = "modulation_numeric"

RECIPE_ARMS = ("modulation_numeric", "modulation_clip", "additive_numeric")
"""The default comparison: the recipe against the prompt through CLIP alone and against additive fusion."""

TRUNK_ARMS = ("modulation_numeric", "modulation_numeric_half", "modulation_numeric_quarter")
"""The trunk-size comparison: the recipe with a full, half and quarter trunk. It needs a backbone wide enough for
three distinct widths: ``backbone_width=64, backbone_norm_groups=16`` gives trunks of 64, 32 and 16 channels."""


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
        arms: which of ``ARMS`` to train (default ``RECIPE_ARMS``; ``TRUNK_ARMS`` compares trunk sizes).
        backbone_width: the backbone's first-level channels (the second level has twice as many).
        backbone_norm_groups: the backbone's GroupNorm groups; a narrower trunk's channels are multiples of them
            (and of its 8 heads), so a trunk-size comparison needs ``backbone_width`` at least four times this.
        prediction_type: what the backbone (and so the adaptors) predict: ``"v_prediction"`` or ``"epsilon"``.
        ema_decay: EMA of the backbone and of each adaptor (evaluation uses the EMA weights).
        max_grad_norm: gradient clipping (adaptors).
        backbone_until, adaptors_until: phase deadlines as fractions of the budget (cumulative).
        eval_crops: held-out crops used (``None``: all of them, 28 with the defaults).
        ddim_steps: sampling steps of every restoration.
        control_noise, control_blur: present levels of the control benchmark's ladders.
        restoration_scales: restoration guidance scales w_r (other than 1) at which the default arm also runs the
            control benchmark: its prediction is pushed away from the blind prompt's (``combine_guidance``), as
            the Restore node's ``restoration_scale`` does (default none: the arm unguided only).
        control_starts: denoise starts (below 1) at which the default arm also runs the control benchmark, each
            with every restoration scale and unguided: sampling begins from the degraded input's latent noised to
            that level, as KSampler's ``denoise`` (default none: from pure noise only, the paper).
        sampling_seed: seed of every restoration's starting noise (``None``: ``seed``, as in every run before it
            existed). Another value measures how far the sampler's draw moves the results; the crops, their
            degradations and the control benchmark's noise fields stay those of ``seed``.
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
    arms: tuple[str, ...] = RECIPE_ARMS
    backbone_width: int = 32
    backbone_norm_groups: int = 32
    prediction_type: str = "v_prediction"
    ema_decay: float = 0.99
    max_grad_norm: float = 1.0
    backbone_until: float = 0.27
    adaptors_until: float = 0.83
    eval_crops: int | None = None
    ddim_steps: int = 25
    control_noise: float = 0.12
    control_blur: float = 2.0
    restoration_scales: tuple[float, ...] = ()
    control_starts: tuple[float, ...] = ()
    sampling_seed: int | None = None
    device: str = "cpu"
    images: tuple[str, ...] = field(default_factory=lambda: tuple(str(SAMPLES_DIR / n) for n in SAMPLE_PHOTOS))

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"miniature arms {unknown or '()'} unknown; expected some of {tuple(ARMS)}")
        if self.restoration_scales or self.control_starts:
            if DEFAULT_ARM not in self.arms:
                raise ValueError(
                    f"restoration scales and control starts are measured on the arm {DEFAULT_ARM}, which is not trained"
                )
            scales, starts = self.restoration_scales, self.control_starts
            if any(not math.isfinite(s) or s < 0 or s == 1 for s in scales) or not labels_are_distinct(scales):
                raise ValueError(
                    f"restoration scales {list(scales)}: expected finite values of at least 0 other than 1 (the "
                    "unguided arm is always measured), distinct to 6 significant digits (results are named by them)"
                )
            if any(not 0 < s < 1 for s in starts) or not labels_are_distinct(starts):
                raise ValueError(
                    f"control starts {list(starts)}: expected values between 0 and 1, exclusive (a start from pure "
                    "noise is always measured), distinct to 6 significant digits (results are named by them)"
                )
        if self.sampling_seed is not None and (
            isinstance(self.sampling_seed, bool) or not isinstance(self.sampling_seed, int) or self.sampling_seed < 0
        ):
            raise ValueError(f"sampling_seed {self.sampling_seed!r}: expected None or an integer of at least 0")
        if self.ddim_steps < 1 or (self.eval_crops is not None and self.eval_crops < 1):
            raise ValueError(
                f"ddim_steps {self.ddim_steps}, eval_crops {self.eval_crops}: expected at least 1 of each (eval_crops "
                "None: all held-out crops)"
            )
        if self.backbone_width % self.backbone_norm_groups:
            raise ValueError(
                f"backbone_width {self.backbone_width} is not a multiple of backbone_norm_groups "
                f"{self.backbone_norm_groups}"
            )
        widths: dict[int, str] = {}
        for arm in self.arms:
            width = self.trunk_width(arm)
            if width in widths and ARMS[arm][2] != ARMS[widths[width]][2]:
                raise ValueError(
                    f"arms {widths[width]} and {arm} would both have a trunk of {width} channels on a backbone "
                    f"{self.backbone_width} wide with {self.backbone_norm_groups} norm groups; a trunk-size "
                    "comparison needs a wider backbone or finer groups (backbone_width=64, backbone_norm_groups=16 "
                    "gives 64, 32 and 16)"
                )
            widths.setdefault(width, arm)

    @property
    def restoration_seed(self) -> int:
        """The seed of every restoration's starting noise (``sampling_seed``, else ``seed``)."""
        return self.seed if self.sampling_seed is None else self.sampling_seed

    @property
    def backbone_channels(self) -> list[int]:
        """The backbone's channels per level."""
        return [self.backbone_width, 2 * self.backbone_width]

    def control_variants(self) -> list[tuple[float, float]]:
        """(restoration scale, denoise start) of every extra control run of the default arm, the plain arm
        (1, 1) excluded."""
        pairs = [(w, d) for d in (1.0, *self.control_starts) for w in (1.0, *self.restoration_scales)]
        return pairs[1:]

    def trunk_width(self, arm: str) -> int:
        """First-level channels of ``arm``'s trunk on this backbone."""
        return trunk_channels(self.backbone_channels, ARMS[arm][2], self.backbone_norm_groups)[0]


EVALUATION_SETTINGS = ("restoration_scales", "control_starts", "ddim_steps", "eval_crops", "sampling_seed", "device")
"""The ``MiniatureConfig`` fields a trained run can be evaluated again with (the rest decide its training). A saved
run whose config lacks one of them (it was trained before the field existed) takes the field's default."""
