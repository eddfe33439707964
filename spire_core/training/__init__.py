"""Train SPIRE adaptors (design.md section 4.4).

    python -m spire_core.training --config train.toml [section.field=value ...]
    accelerate launch -m spire_core.training --config train.toml          # several GPUs / nodes

    config = load_config("train.toml", ["train.steps=1000"])
    trainer = Trainer(config)        # frozen UNet/VAE/text encoder, trainable SpireAdaptor, AdamW, EMA
    trainer.train()                  # checkpoints, validation images, JSON-lines log, exported adaptor

The exported ``output_dir/adaptor.safetensors`` loads with ``spire_core.models.load_adaptor`` and in the
ComfyUI nodes unchanged. ``write_tiny_base`` writes a tiny random diffusers model for smoke runs and tests.
See docs/training.md.
"""

from ..models.components import SD_SCHEDULER_CONFIG, FrozenComponents, encode_prompts, load_components
from .checkpoints import (
    CheckpointError,
    adaptor_from_checkpoint,
    export_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from .config import (
    SECTIONS,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DegradationConfig,
    EmaConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    PromptConfig,
    TrainConfig,
    TrainingConfig,
    ValidationConfig,
)
from .configfile import config_from_dict, load_config
from .data import BAD_REASONS, CropStream, DataError, ImageRecord, ScanReport, load_coco_captions, scan_folder
from .ema import EMA
from .logs import RunLog, read_log
from .loss import TrainingBatch, controlled_prediction, diffusion_loss, make_training_batch
from .synth import SampleDraw, SynthBatch, draw_sample, synthesize
from .tiny import build_tiny_components, write_tiny_base
from .trainer import Trainer, TrainingDiverged, run_training

__all__ = [
    "BAD_REASONS",
    "EMA",
    "SD_SCHEDULER_CONFIG",
    "SECTIONS",
    "CheckpointConfig",
    "CheckpointError",
    "ConfigError",
    "CropStream",
    "DataConfig",
    "DataError",
    "DegradationConfig",
    "EmaConfig",
    "FrozenComponents",
    "ImageRecord",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "PromptConfig",
    "RunLog",
    "SampleDraw",
    "ScanReport",
    "SynthBatch",
    "TrainConfig",
    "Trainer",
    "TrainingBatch",
    "TrainingConfig",
    "TrainingDiverged",
    "ValidationConfig",
    "adaptor_from_checkpoint",
    "build_tiny_components",
    "config_from_dict",
    "controlled_prediction",
    "diffusion_loss",
    "draw_sample",
    "encode_prompts",
    "export_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_coco_captions",
    "load_components",
    "load_config",
    "make_training_batch",
    "read_checkpoint",
    "read_log",
    "run_training",
    "scan_folder",
    "synthesize",
    "write_checkpoint",
    "write_tiny_base",
]
