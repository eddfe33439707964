"""Training configuration: one dataclass per section, every field named and defaulted.

A config file is JSON or TOML with one table per section (``[model]``, ``[data]``, ...), read by
``configfile.load_config`` together with command-line overrides ``section.field=value`` (``configfile`` also
checks each value's type and builds these dataclasses from the nested dicts: ``config_from_dict``).

Defaults marked "paper #n" come from ``reference/spire-paper.md`` section 10 (the project's decisions where
the paper is silent); the rest are ordinary diffusers/ControlNet training practice. Relative paths in a
config file are resolved against the file's folder; relative paths given as overrides against the current
working directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..degradation import DEFAULT_PRESET, PRESETS, DegradationSpec
from ..models import BASE_FAMILIES, FUSIONS, PREDICTION_TYPES, TEXT_ENCODER_LAYERS
from ..models.config import NUMERIC_TOKENS_DEFAULT, TRUNK_SIZES
from ..models.numeric import MAX_NUMERIC_TOKENS


class ConfigError(ValueError):
    """A training config is malformed; the message names the field, the value and what is accepted."""


CAPTION_SOURCES = ("auto", "coco", "txt", "none")
"""Where semantic prompts come from: a COCO captions JSON, sidecar ``.txt`` files, or nowhere (empty prompt)."""

RESIZE_MODES = ("short_side", "none")
"""``short_side``: resize so the short side equals the crop size before cropping (paper #14); ``none``: crop as is."""

BAD_DATA_MODES = ("skip", "error")
"""``skip``: leave bad images out and count them in the log; ``error``: stop with a message naming the file."""

MIXED_PRECISION = ("no", "bf16", "fp16")
"""accelerate's mixed-precision modes (fp16 needs CUDA)."""

DEVICES = ("auto", "cpu")
"""``auto``: what accelerate picks (the GPU of this process under ``accelerate launch``); ``cpu``: force the CPU."""

EXPORT_WEIGHTS = ("ema", "raw")
"""Which weights an exported adaptor holds: the EMA average or the optimiser's current weights."""

TENSORBOARD_MODES = ("auto", "on", "off")
"""``auto``: write TensorBoard events when the ``tensorboard`` package is installed."""


@dataclass
class ModelConfig:
    """The frozen base model and the adaptor built on it.

    Attributes:
        base: diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a
            single-file SD1.x/SD2.x/SDXL ``.safetensors`` checkpoint; its UNet is loaded with
            ``spire_core.models.load_base_unet``.
        components: diffusers folder holding ``vae/``, ``text_encoder/`` and ``tokenizer/`` (and optionally
            ``scheduler/``); ``None``: ``base`` itself, which must then be a folder. Needed for single files.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` to override what the base declares.
        base_family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"custom"`` to override the family inferred from the UNet.
        fusion: ``"modulation"`` (SPIRE, paper #5) or ``"additive"`` (plain ControlNet, for ablations).
        text_encoder_layer: ``"last"`` or ``"penultimate"`` for the restoration prompt; ``None``: the family's
            own layer (SD1 last, SD2 penultimate), which is what a diffusers folder's text encoder outputs.
        init_adaptor: an existing adaptor ``.safetensors`` to start from instead of a fresh copy of the UNet.
        numeric_tokens: tokens of the fresh adaptor's numeric side channel (the restoration prompt's parsed numbers
            as extra cross-attention tokens, ``spire_core.models.numeric``); 0: CLIP only, as adaptors before it.
        trunk: the fresh adaptor's trunk width: ``"full"`` (the paper's copy of the encoder), ``"half"``,
            ``"quarter"`` or a first-level channel count (``spire_core.models.config.trunk_channels``).
    """

    base: str = ""
    components: str | None = None
    prediction_type: str | None = None
    base_family: str | None = None
    fusion: str = "modulation"
    text_encoder_layer: str | None = None
    init_adaptor: str | None = None
    numeric_tokens: int = NUMERIC_TOKENS_DEFAULT
    trunk: str | int = "full"

    def check(self) -> None:
        if isinstance(self.trunk, bool) or not isinstance(self.trunk, (str, int)):
            raise ConfigError(f"model.trunk must be full, half, quarter or a channel count; got {self.trunk!r}")
        if isinstance(self.trunk, str) and self.trunk not in TRUNK_SIZES:
            raise ConfigError(
                f"model.trunk must be one of {', '.join(TRUNK_SIZES)} or a channel count; got {self.trunk!r}"
            )
        if self.trunk != "full" and self.fusion != "modulation":
            raise ConfigError("model.trunk narrower than full needs model.fusion = modulation")
        if isinstance(self.numeric_tokens, bool) or not isinstance(self.numeric_tokens, int):
            raise ConfigError(f"model.numeric_tokens must be an integer in 0..64; got {self.numeric_tokens!r}")
        if not 0 <= self.numeric_tokens <= MAX_NUMERIC_TOKENS:
            raise ConfigError(f"model.numeric_tokens must be in 0..{MAX_NUMERIC_TOKENS}; got {self.numeric_tokens}")
        if not self.base:
            raise ConfigError("model.base is required: a diffusers folder or a single-file SD .safetensors checkpoint")
        _choose("model.fusion", self.fusion, FUSIONS)
        if self.prediction_type is not None:
            _choose("model.prediction_type", self.prediction_type, PREDICTION_TYPES)
        if self.base_family is not None:
            _choose("model.base_family", self.base_family, BASE_FAMILIES)
        if self.text_encoder_layer is not None:
            _choose("model.text_encoder_layer", self.text_encoder_layer, TEXT_ENCODER_LAYERS)


@dataclass
class DataConfig:
    """Training images and their captions.

    Attributes:
        folder: folder of images (``.jpg .jpeg .png .webp .bmp .tif .tiff``), searched recursively.
        captions: ``"coco"`` (``captions_file``), ``"txt"`` (``photo.txt`` beside ``photo.jpg``; one caption
            per non-empty line, one drawn per sample), ``"none"`` (empty semantic prompt) or ``"auto"``
            (coco when ``captions_file`` is set, else txt when any sidecar exists, else none).
        captions_file: COCO captions JSON (``captions_train2017.json``); relative file names match by name.
        resolution: crop size in pixels (square); a multiple of 8 (paper #14: 512).
        resize: ``"short_side"`` resizes each image so its short side equals ``resolution`` before the random
            crop (paper #14); ``"none"`` crops the image as it is.
        max_upscale: with ``short_side``, images that would need more enlargement than this are bad data
            ("too small"); COCO's 640x480 needs 1.07.
        hflip: flip crops left-right with probability 0.5 (off: captions may say left/right).
        on_bad: ``"skip"`` unreadable images, images smaller than the crop and images without a caption (counted
            in the log), or ``"error"``: stop with a message naming the file.
        num_workers: DataLoader worker processes per training process (0: load in the training process).
    """

    folder: str = ""
    captions: str = "auto"
    captions_file: str | None = None
    resolution: int = 512
    resize: str = "short_side"
    max_upscale: float = 1.25
    hflip: bool = False
    on_bad: str = "skip"
    num_workers: int = 4

    def check(self) -> None:
        if not self.folder:
            raise ConfigError("data.folder is required: a folder of training images")
        _choose("data.captions", self.captions, CAPTION_SOURCES)
        _choose("data.resize", self.resize, RESIZE_MODES)
        _choose("data.on_bad", self.on_bad, BAD_DATA_MODES)
        if self.captions == "coco" and not self.captions_file:
            raise ConfigError("data.captions='coco' needs data.captions_file (a COCO captions JSON)")
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"data.resolution must be a positive multiple of 8; got {self.resolution}")
        if self.max_upscale < 1.0:
            raise ConfigError(f"data.max_upscale must be >= 1.0; got {self.max_upscale}")
        _at_least("data.num_workers", self.num_workers, 0)


@dataclass
class DegradationConfig:
    """How degraded inputs are synthesised (on the training device, per batch).

    Attributes:
        preset: a ``spire_core.degradation.PRESETS`` name (default ``"paper"``: paper #7-#9).
        spec: a full ``DegradationSpec`` as a dict (``DegradationSpec.to_dict``) replacing the preset.
    """

    preset: str = DEFAULT_PRESET
    spec: dict[str, Any] | None = None

    def check(self) -> None:
        if self.spec is None:
            _choose("degradation.preset", self.preset, tuple(PRESETS))
        else:
            try:
                DegradationSpec.from_dict(self.spec)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"degradation.spec is not a valid DegradationSpec: {error}") from None

    def build(self) -> DegradationSpec:
        """The ``DegradationSpec`` to sample from."""
        return DegradationSpec.from_dict(self.spec) if self.spec is not None else PRESETS[self.preset]


@dataclass
class PromptConfig:
    """Which prompts each training sample gets.

    A sample is **partial** with ``partial_prob``, else **graded** with ``graded_prob``, else **full**; a full
    sample's prompt becomes blind with ``blind_prob``. With the defaults: 30 % partial, 30 % graded, 28 % full
    and 12 % blind (of samples with at least two degradations present; a sample with one degradation cannot be
    partial and is graded or full instead).

    Attributes:
        partial_prob: a partial sample names a random non-empty proper subset of the degradations present, each in
            full, and its target keeps the others (paper #11 names 0.5 for this alone; the graded share is taken
            from it: a partial sample is a graded one whose levels are all full or zero).
        graded_prob: a graded sample names a random non-empty subset of the degradations present, each at a level
            drawn level-balanced (a uniform fraction of the level present; ``degradation.graded_request``), and its
            target keeps the residual of each named level and every unnamed degradation in full
            (``degradation.degrade_graded``). Clauses that cannot be named partly (JPEG, non-Gaussian blur) are
            named in full.
        blind_prob: probability that a full sample's restoration prompt becomes ``"Remove all degradation"``
            (paper #12: 0.3).
        empty_semantic_prob: probability that the semantic prompt becomes ``""`` (paper #13: 0.3).
    """

    partial_prob: float = 0.3
    graded_prob: float = 0.3
    blind_prob: float = 0.3
    empty_semantic_prob: float = 0.3

    def check(self) -> None:
        for name in ("partial_prob", "graded_prob", "blind_prob", "empty_semantic_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"prompts.{name} must be a probability in [0, 1]; got {value}")
        if self.partial_prob + self.graded_prob > 1.0:
            raise ConfigError(
                f"prompts.partial_prob + prompts.graded_prob must be at most 1 (the rest are full samples); got "
                f"{self.partial_prob} + {self.graded_prob}"
            )


@dataclass
class TrainConfig:
    """The loop.

    Attributes:
        output_dir: where checkpoints, logs, validation images and the exported adaptor go.
        steps: optimiser steps in total (paper #15: 100k-150k).
        batch_size: images per forward pass per process. The global batch is
            ``batch_size * gradient_accumulation_steps * processes`` (paper #15: 64-256).
        gradient_accumulation_steps: forward/backward passes per optimiser step.
        seed: every random draw (data order, crops, degradations, prompt dropout, noise, timesteps) derives from
            it and the sample's position in the data stream, so a run is reproducible and resumable.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (paper #15); frozen models are stored in that dtype,
            the adaptor keeps float32 master weights under autocast. CPU: ``"no"`` or ``"bf16"``.
        gradient_checkpointing: recompute the adaptor trunk's activations in the backward pass (less memory,
            about 20-30% slower).
        unet_gradient_checkpointing: the same for the frozen UNet, whose activations the backward pass also
            needs (the modulated skips feed its decoder).
        device: ``"auto"`` (accelerate's choice) or ``"cpu"``.
        resume: ``"latest"`` (newest checkpoint in ``output_dir``, or start fresh when there is none), a
            checkpoint folder, or ``None``.
    """

    output_dir: str = "spire-training"
    steps: int = 100_000
    batch_size: int = 8
    gradient_accumulation_steps: int = 8
    seed: int = 0
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    unet_gradient_checkpointing: bool = False
    device: str = "auto"
    resume: str | None = None

    def check(self) -> None:
        _at_least("train.steps", self.steps, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        _at_least("train.seed", self.seed, 0)
        _choose("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choose("train.device", self.device, DEVICES)
        if self.device == "cpu" and self.mixed_precision == "fp16":
            raise ConfigError("train.mixed_precision='fp16' needs CUDA; on the CPU use 'no' or 'bf16'")


@dataclass
class OptimConfig:
    """AdamW on the adaptor's parameters.

    Attributes:
        lr: learning rate (paper #15: 1e-5, ControlNet's default).
        weight_decay: decoupled weight decay (paper #15: 0).
        beta1, beta2, eps: AdamW moments and epsilon.
        warmup_steps: linear learning-rate warm-up from 0 over this many steps, then constant.
        max_grad_norm: clip the global gradient norm to this (0: no clipping).
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0

    def check(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0; got {self.lr}")
        for name in ("weight_decay", "max_grad_norm", "eps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optim.{name} must be >= 0; got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name} must be in [0, 1); got {getattr(self, name)}")
        _at_least("optim.warmup_steps", self.warmup_steps, 0)


@dataclass
class EmaConfig:
    """Exponential moving average of the adaptor's weights (paper #15: "EMA optional").

    Attributes:
        enabled: keep an EMA copy (float32, on the training device).
        decay: target decay; the effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates, so
            early averages are not dominated by the initial weights.
        every: update the EMA every this many optimiser steps.
    """

    enabled: bool = True
    decay: float = 0.9999
    every: int = 1

    def check(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1); got {self.decay}")
        _at_least("ema.every", self.every, 1)


@dataclass
class CheckpointConfig:
    """Resumable checkpoints and the exported adaptor.

    Attributes:
        every: write a checkpoint every this many optimiser steps (and at the end).
        keep: how many of the newest checkpoints to keep (0: all).
        export_weights: ``"ema"`` (default when EMA is enabled) or ``"raw"``: what ``adaptor.safetensors`` holds.
        export_name: file name of the exported adaptor inside ``output_dir``.
    """

    every: int = 2000
    keep: int = 3
    export_weights: str = "ema"
    export_name: str = "adaptor.safetensors"

    def check(self) -> None:
        _at_least("checkpoint.every", self.every, 1)
        _at_least("checkpoint.keep", self.keep, 0)
        _choose("checkpoint.export_weights", self.export_weights, EXPORT_WEIGHTS)
        if not self.export_name.endswith(".safetensors") or "/" in self.export_name:
            raise ConfigError(f"checkpoint.export_name must be a plain '*.safetensors' name; got {self.export_name!r}")


@dataclass
class ValidationConfig:
    """Restorations written as images while training (main process only).

    Attributes:
        every: every this many optimiser steps (0: never); also at the end when enabled.
        num_images: how many images (the first ones of ``folder`` or of the training data, centre-cropped).
        folder: a separate folder of validation images (captions read the same way as the training data).
        steps: DDIM sampling steps (paper #16 uses 50 for results; fewer keeps validation cheap).
        guidance_scale: classifier-free guidance over the semantic prompt (paper #17: 5); 1 disables it.
        seed: fixes the validation degradations and initial noise, so images are comparable across steps.
    """

    every: int = 2000
    num_images: int = 4
    folder: str | None = None
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 1234

    def check(self) -> None:
        _at_least("validation.every", self.every, 0)
        _at_least("validation.num_images", self.num_images, 1)
        _at_least("validation.steps", self.steps, 1)
        if self.guidance_scale < 1.0:
            raise ConfigError(f"validation.guidance_scale must be >= 1 (1: no guidance); got {self.guidance_scale}")


@dataclass
class LoggingConfig:
    """Metrics: a JSON-lines file always (``output_dir/logs/train.jsonl``), TensorBoard optionally.

    Attributes:
        every: log the loss every this many optimiser steps.
        tensorboard: ``"auto"``, ``"on"`` or ``"off"``.
    """

    every: int = 10
    tensorboard: str = "auto"

    def check(self) -> None:
        _at_least("logging.every", self.every, 1)
        _choose("logging.tensorboard", self.tensorboard, TENSORBOARD_MODES)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "degradation": DegradationConfig,
    "prompts": PromptConfig,
    "train": TrainConfig,
    "optim": OptimConfig,
    "ema": EmaConfig,
    "checkpoint": CheckpointConfig,
    "validation": ValidationConfig,
    "logging": LoggingConfig,
}
"""Config section name -> dataclass."""

PATH_FIELDS = (
    "model.base",
    "model.components",
    "model.init_adaptor",
    "data.folder",
    "data.captions_file",
    "train.output_dir",
    "validation.folder",
)
"""Fields holding paths (resolved against the config file's folder when relative)."""


@dataclass
class TrainingConfig:
    """The whole training configuration; see each section's class for its fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def check(self) -> TrainingConfig:
        """Validate every section; raise ``ConfigError`` naming the first bad field. Returns ``self``."""
        for name in SECTIONS:
            getattr(self, name).check()
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with one entry per section."""
        return json.loads(json.dumps(asdict(self)))


def _choose(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
