"""The training loop: frozen UNet/VAE/text encoder, a trainable ``SpireAdaptor``, AdamW, EMA, accelerate.

One optimiser step = ``gradient_accumulation_steps`` micro-batches of ``batch_size`` crops per process:

1. crops from the data stream (``data``), moved to the training device as float in [0, 1];
2. degradations, partial prompts and prompt dropout synthesised on that device (``synth``);
3. target latents ``z0 = (mean + std * n) * scaling_factor`` from the frozen VAE, prompts through the frozen
   CLIP text encoder (semantic prompt to the UNet, restoration prompt to the adaptor);
4. ``z_t = DDPM.add_noise(z0, eps, t)`` with t uniform over the training timesteps, and the standard diffusion
   loss ``MSE(prediction, eps)`` (or ``MSE(prediction, v)`` for v-prediction bases), where the prediction is
   the frozen UNet controlled by the adaptor (``spire_core.models`` fusion: modulation or additive);
5. ``accelerate`` backward (loss scaled for accumulation, gradients all-reduced across processes), gradient
   clipping, AdamW step, EMA update.

Every random number comes from (seed, stream position), see ``seeds``; with the checkpointed optimiser, EMA
and data position, a resumed run continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import save_adaptor
from ..models.checkpoint import non_finite
from ..models.components import FrozenComponents, load_components, make_noise_scheduler
from ..progress import logging_to_bars, progress
from .checkpoints import (
    CheckpointError,
    export_metadata,
    latest_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    prefixed,
    prune_checkpoints,
    read_checkpoint,
    restore_rng_states,
    rng_state_tensors,
    unprefixed,
    write_checkpoint,
)
from .components import build_adaptor
from .config import TrainingConfig
from .data import BAD_REASONS, CropStream, DataError, make_loader, refuse_long_captions, scan_folder
from .ema import EMA
from .logs import LOGGER, RunLog
from .loss import TrainingBatch, diffusion_loss, make_training_batch
from .validation import ValidationSet, build_validation_set, restore, save_validation

WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Storage dtype of the frozen UNet and text encoder per ``train.mixed_precision``."""


def _make_accelerator(config: TrainingConfig):  # noqa: ANN202 - accelerate type
    from accelerate import Accelerator

    return Accelerator(
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        mixed_precision=config.train.mixed_precision,
        cpu=config.train.device == "cpu",
        step_scheduler_with_optimizer=False,
    )


class TrainingDiverged(RuntimeError):
    """The adaptor's weights went NaN or Inf; the message says at which step the loss went non-finite."""


class Trainer:
    """Trains one SPIRE adaptor as configured; see the module docstring for the step.

    Attributes:
        config: the validated ``TrainingConfig``.
        accelerator: the ``accelerate.Accelerator`` (device placement, mixed precision, accumulation, DDP).
        components: the frozen models, on the training device.
        adaptor: the trainable ``SpireAdaptor`` (unwrapped; ``model`` is what accelerate prepared).
        ema: the ``EMA`` of the adaptor's weights, or ``None``.
        step: optimiser steps done.
        samples: data-stream positions consumed (global, all processes).
        history: ``{"step", "loss", ...}`` records of the steps run by this object.
        bar: the progress bar of the last ``train`` call (``spire_core.progress``: stderr, local main process;
            its count is the step, its postfix the last loss and learning rate), or ``None`` before.
    """

    def __init__(
        self, config: TrainingConfig, components: FrozenComponents | None = None, accelerator: Any = None
    ) -> None:
        """Load everything, build the adaptor and optimiser, and resume when ``train.resume`` says so.

        Args:
            config: validated or not (``check`` is called).
            components: frozen models to use instead of loading ``model.base`` (tests, notebooks); float32.
            accelerator: an ``accelerate.Accelerator`` to use instead of building one from the config.
        """
        self.config = config.check()
        self.accelerator = accelerator or _make_accelerator(config)
        self.device = self.accelerator.device
        self.output_dir = Path(config.train.output_dir)
        self.is_main = self.accelerator.is_main_process
        self.log = RunLog(self.output_dir, config.logging.tensorboard, enabled=self.is_main)
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.samples = 0
        self.first_nonfinite_loss: int | None = None  # the first step whose loss was NaN or Inf
        self._skipped = Counter()
        self._validation: ValidationSet | None = None
        self.bar: Any = None

        scan = scan_folder(config.data)  # before the base loads: a bad data folder fails at once

        if components is None:
            components = load_components(config.model.base, config.model.components, config.model.prediction_type)
        self.scan = refuse_long_captions(scan, components.tokenizer, config.data.on_bad)
        self.stream = CropStream(self.scan.records, config.data, config.train.seed)
        summary = self.scan.summary()
        self.log.write("data_scan", **summary)
        if any(summary["skipped"].values()):
            LOGGER.warning("data: left out %s (examples in %s)", summary["skipped"], self.log.path)
        LOGGER.info("data: %d usable images, captions from %s", len(self.scan.records), self.scan.caption_source)
        if config.model.base_family:
            components.info.base_family = config.model.base_family
        self.components = components
        self.adaptor = build_adaptor(config.model, components, config.train.seed)
        weight_dtype = WEIGHT_DTYPES[config.train.mixed_precision]
        # nn.Module.to: diffusers' own .to warns about every dtype cast, even for models with nothing to keep in fp32.
        nn.Module.to(components.unet, self.device, dtype=weight_dtype)
        for encoder in components.text_encoders:
            nn.Module.to(encoder, self.device, dtype=weight_dtype)
        nn.Module.to(components.vae, self.device, dtype=torch.float32)
        if config.train.unet_gradient_checkpointing:
            components.unet.enable_gradient_checkpointing()
        if config.train.gradient_checkpointing:
            self.adaptor.controlnet.enable_gradient_checkpointing()
        self.noise_scheduler = make_noise_scheduler(components.scheduler_config)
        self.prediction_type = components.scheduler_config["prediction_type"]
        self.spec = config.degradation.build()

        self.adaptor.train()
        optim = config.optim
        optimizer = torch.optim.AdamW(
            self.adaptor.parameters(),
            lr=optim.lr,
            betas=(optim.beta1, optim.beta2),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        self.model, self.optimizer = self.accelerator.prepare(self.adaptor, optimizer)
        self.ema = EMA(self.adaptor, config.ema.decay) if config.ema.enabled else None
        self._resume()

    # ----------------------------------------------------------------------------------------- setup

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def global_batch(self) -> int:
        """Images per optimiser step over all processes."""
        train = self.config.train
        return train.batch_size * train.gradient_accumulation_steps * self.world_size

    def _resume(self) -> None:
        resume = self.config.train.resume
        if resume is None:
            return
        if resume == "latest":
            path = latest_checkpoint(self.output_dir / "checkpoints")
            if path is None:
                LOGGER.info("resume=latest: no checkpoint in %s; starting fresh", self.output_dir / "checkpoints")
                return
        else:
            path = Path(resume)
        self.load_checkpoint(path)

    # ----------------------------------------------------------------------------------------- batches

    def make_batch(self, loaded: dict[str, Any]) -> TrainingBatch:
        """Synthesise a micro-batch on the training device from what the data loader returned (``data.collate``)."""
        return make_training_batch(
            loaded,
            self.device,
            self.spec,
            self.config.prompts,
            self.config.train.seed,
            self.components,
            self.noise_scheduler.config.num_train_timesteps,
        )

    def load_positions(self, positions: list[int]) -> dict[str, Any]:
        """What the data loader yields for these stream positions (loaded in this process)."""
        from .data import collate

        return collate([self.stream[k] for k in positions])

    def compute_loss(self, batch: TrainingBatch) -> torch.Tensor:
        """The diffusion loss of the controlled UNet on ``batch`` (scalar, float32, differentiable)."""
        return diffusion_loss(
            batch,
            self.components,
            self.adaptor,
            self.noise_scheduler,
            forward=self.model,
            autocast=self.accelerator.autocast(),
        )

    # ----------------------------------------------------------------------------------------- loop

    def _learning_rate(self) -> float:
        optim = self.config.optim
        if optim.warmup_steps and self.step < optim.warmup_steps:
            return optim.lr * (self.step + 1) / optim.warmup_steps
        return optim.lr

    def _loader(self):  # noqa: ANN202 - torch type
        per_micro = self.config.train.batch_size * self.world_size
        return make_loader(
            self.stream,
            self.config.train.batch_size,
            self.accelerator.process_index,
            self.world_size,
            start=self.samples // per_micro,
            num_workers=self.config.data.num_workers,
            pin=self.device.type == "cuda",
        )

    def train_step(self, loaded_batches: Any) -> dict[str, Any]:
        """One optimiser step over ``gradient_accumulation_steps`` loaded micro-batches (an iterator).

        Returns:
            The step record (also appended to ``history`` and, every ``logging.every`` steps, to the log).
        """
        accelerator, optim = self.accelerator, self.config.optim
        losses, grad_norm = [], None
        lr = self._learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for _ in range(self.config.train.gradient_accumulation_steps):
            batch = self.make_batch(next(loaded_batches))
            self._skipped.update(reason for _, reason in batch.skipped)
            for path, reason in batch.skipped:
                LOGGER.warning("data: skipped %s (%s) at step %d", path, reason, self.step + 1)
            with accelerator.accumulate(self.model):
                loss = self.compute_loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if optim.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), optim.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        if not accelerator.sync_gradients:  # pragma: no cover - accelerate's counter drifted from ours
            raise RuntimeError("gradient accumulation is out of step with the optimiser steps")
        self.step += 1
        self.samples += self.global_batch
        if self.ema is not None and self.step % self.config.ema.every == 0:
            self.ema.update()
        loss_value = float(accelerator.reduce(torch.stack(losses).mean(), reduction="mean"))
        if not math.isfinite(loss_value) and self.first_nonfinite_loss is None:
            self.first_nonfinite_loss = self.step
            LOGGER.warning("the loss is %s at step %d: training may be diverging", loss_value, self.step)
        skipped = accelerator.reduce(
            torch.tensor([self._skipped[r] for r in BAD_REASONS], device=self.device), reduction="sum"
        )
        record = {
            "step": self.step,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "samples": self.samples,
            "epoch": round(self.samples / len(self.scan.records), 4),
            "skipped_while_loading": dict(zip(BAD_REASONS, (int(v) for v in skipped.tolist()))),
        }
        self.history.append(record)
        return record

    def train(self, stop_at: int | None = None) -> list[dict[str, Any]]:
        """Run until ``train.steps`` (or ``stop_at``) optimiser steps are done, checkpointing, validating and
        logging as configured; at the end write a checkpoint and export the adaptor.

        Args:
            stop_at: stop after this step without the end-of-run checkpoint/export (as if the process were killed
                right after that step's checkpoint).

        Returns:
            The records of the steps run (``history``).
        """
        config = self.config
        end = config.train.steps if stop_at is None else min(stop_at, config.train.steps)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(
                json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
        self.log.write(
            "start",
            step=self.step,
            processes=self.world_size,
            device=str(self.device),
            global_batch=self.global_batch,
            mixed_precision=config.train.mixed_precision,
        )
        LOGGER.info(
            "training from step %d to %d: global batch %d on %d process(es), %s",
            self.step,
            end,
            self.global_batch,
            self.world_size,
            self.device,
        )
        loader = iter(self._loader())
        # One bar, on the local main process only; it writes to stderr, so the JSON-lines log is unchanged.
        local_main = self.accelerator.is_local_main_process
        self.bar = progress(
            total=end, initial=self.step, desc="train", unit="step", enabled=None if local_main else False
        )
        started, since = time.perf_counter(), self.step
        with self.bar, logging_to_bars(self.bar):
            while self.step < end:
                record = self.train_step(loader)
                self.bar.set_postfix_str(f"loss={record['loss']:.5f}, lr={record['lr']:.3g}", refresh=False)
                self.bar.update(1)
                if self.step % config.logging.every == 0 or self.step == end:
                    per_step = (time.perf_counter() - started) / (self.step - since)
                    self.log.write("step", **record, seconds_per_step=round(per_step, 4))
                    LOGGER.info("step %d  loss %.5f  %.2f s/step", self.step, record["loss"], per_step)
                    started, since = time.perf_counter(), self.step
                if self.step % config.checkpoint.every == 0:
                    self.save_checkpoint()
                if config.validation.every and self.step % config.validation.every == 0:
                    self.validate()
        del loader
        if stop_at is None or stop_at >= config.train.steps:
            if self.step % config.checkpoint.every != 0:
                self.save_checkpoint()
            if config.validation.every and self.step % config.validation.every != 0:
                self.validate()
            self.export()
            self.log.write("end", step=self.step)
        return self.history

    # ----------------------------------------------------------------------------------------- state

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON state) describing the run exactly (see ``checkpoints``)."""
        optimizer_tensors, optimizer_rest = optimizer_to_checkpoint(self.optimizer.state_dict())
        tensors = {
            **prefixed("adaptor", dict(self.adaptor.named_parameters())),
            **optimizer_tensors,
            **rng_state_tensors(self.accelerator),
        }
        if self.ema is not None:
            tensors.update(prefixed("ema", self.ema.state_tensors()))
        scaler = self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None
        state = {
            "samples": self.samples,
            "seed": self.config.train.seed,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            "adaptor_config": self.adaptor.config.to_metadata(),
            "optimizer": {**optimizer_rest, "param_names": [n for n, _ in self.adaptor.named_parameters()]},
            "ema": None if self.ema is None else {"decay": self.ema.decay, "updates": self.ema.updates},
            "scaler": scaler,
            "data": {"images": len(self.scan.records), "first": str(self.scan.records[0].path)},
            "config": self.config.to_dict(),
        }
        return tensors, state

    def check_finite(self, what: str) -> None:
        """Raise ``TrainingDiverged`` if the adaptor's weights (or their EMA) hold NaN or Inf: nothing diverged is
        written (``what`` says what was about to be)."""
        bad = list(non_finite(dict(self.adaptor.named_parameters())))
        if self.ema is not None:
            bad += list(non_finite({f"ema {i}": t for i, t in enumerate(self.ema.shadow)}))
        if not bad:
            return
        when = (
            f"the loss first went non-finite at step {self.first_nonfinite_loss}"
            if self.first_nonfinite_loss is not None
            else "the loss stayed finite"
        )
        raise TrainingDiverged(
            f"training diverged: at step {self.step} {len(bad)} adaptor tensors hold NaN or Inf ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); {when}. The {what} is not written. Resume from the last checkpoint "
            "with a lower optim.lr, or train in bf16 instead of fp16."
        )

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint for the current step (main process) and prune old ones; returns its folder.

        Raises:
            TrainingDiverged: the weights are not finite (nothing is written).
        """
        self.check_finite("checkpoint")
        tensors, state = self.checkpoint_state()
        self.accelerator.wait_for_everyone()
        path = None
        folder = self.output_dir / "checkpoints"
        if self.is_main:
            path = write_checkpoint(folder, self.step, tensors, state)
            deleted = prune_checkpoints(folder, self.config.checkpoint.keep)
            self.log.write("checkpoint", step=self.step, path=str(path), deleted=[str(p) for p in deleted])
            LOGGER.info("checkpoint: %s", path)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore adaptor, optimiser, EMA, gradient scaler, RNG states and data position from a checkpoint.

        Raises:
            CheckpointError: the checkpoint is damaged or belongs to a different adaptor (base, fusion, ...).
        """
        tensors, state = read_checkpoint(path)
        if state["adaptor_config"] != self.adaptor.config.to_metadata():
            raise CheckpointError(
                f"{path} was written for a different adaptor (base model, fusion or text-encoder layer differ); "
                "resume with the model settings of that run, or start a new output_dir"
            )
        if state["seed"] != self.config.train.seed:
            LOGGER.warning("resuming with seed %d; the checkpoint used %d", self.config.train.seed, state["seed"])
        if state["global_batch"] != self.global_batch:
            LOGGER.warning(
                "resuming with a global batch of %d (checkpoint: %d); the data position is kept in images",
                self.global_batch,
                state["global_batch"],
            )
        weights = unprefixed("adaptor", tensors)
        with torch.no_grad():
            for name, parameter in self.adaptor.named_parameters():
                if name not in weights or weights[name].shape != parameter.shape:
                    raise CheckpointError(f"{path}: adaptor weight {name} is missing or has the wrong shape")
                parameter.copy_(weights[name])
        names = [n for n, _ in self.adaptor.named_parameters()]
        if state["optimizer"]["param_names"] != names:
            raise CheckpointError(f"{path}: the optimiser state lists different parameters than this adaptor")
        self.optimizer.load_state_dict(optimizer_from_checkpoint(tensors, state["optimizer"]))
        if self.ema is not None:
            ema_tensors = unprefixed("ema", tensors)
            if ema_tensors:
                self.ema.load_state_tensors(ema_tensors, state["ema"]["updates"])
            else:
                LOGGER.warning("%s has no EMA weights; the EMA restarts from the current weights", path)
                self.ema = EMA(self.adaptor, self.config.ema.decay)
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        restore_rng_states(tensors, self.accelerator.process_index, self.device)
        self.step = int(state["step"])
        self.samples = int(state["samples"])
        self.log.write("resume", step=self.step, path=str(path), samples=self.samples)
        LOGGER.info("resumed from %s (step %d)", path, self.step)

    # ----------------------------------------------------------------------------------------- outputs

    def export(self, path: str | Path | None = None, weights: str | None = None) -> Path | None:
        """Write the adaptor with ``spire_core.models.save_adaptor`` (main process); EMA weights by default.

        Args:
            path: destination (default ``output_dir / checkpoint.export_name``).
            weights: ``"ema"`` or ``"raw"`` (default ``checkpoint.export_weights``; raw when EMA is off).

        Returns:
            The file written (``None`` on other processes).

        Raises:
            TrainingDiverged: the weights are not finite (nothing is written).
        """
        self.check_finite("exported adaptor")
        weights = weights or self.config.checkpoint.export_weights
        if weights == "ema" and self.ema is None:
            weights = "raw"
        path = Path(path) if path is not None else self.output_dir / self.config.checkpoint.export_name
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        metadata = export_metadata(self.step, weights)
        if weights == "ema":
            with self.ema.swapped():
                save_adaptor(self.adaptor, path, extra_metadata=metadata)
        else:
            save_adaptor(self.adaptor, path, extra_metadata=metadata)
        self.log.write("export", step=self.step, path=str(path), weights=weights)
        LOGGER.info("exported %s weights to %s", weights, path)
        return path

    def validation_set(self) -> ValidationSet:
        """The fixed validation inputs (built on first use)."""
        if self._validation is None:
            config = self.config
            records = self.scan.records
            if config.validation.folder:
                from dataclasses import replace

                scan = scan_folder(replace(config.data, folder=config.validation.folder, on_bad="skip"))
                records = refuse_long_captions(scan, self.components.tokenizer).records
            self._validation = build_validation_set(
                records, config.data, self.spec, config.validation.seed, config.validation.num_images
            )
        return self._validation

    def validate(self) -> Path | None:
        """Restore the validation set (EMA weights when enabled) and save ``validation/step-XXXXXXXX.png`` with rows
        degraded / restored / clean, plus a JSON with prompts and PSNR; main process only."""
        self.accelerator.wait_for_everyone()
        path = None
        if self.is_main:
            path = self._validate_main()
        self.accelerator.wait_for_everyone()
        return path

    def _validate_main(self) -> Path | None:
        try:
            fixed = self.validation_set()
        except (DataError, ValueError) as error:
            LOGGER.warning("validation skipped: %s", error)
            return None
        settings = self.config.validation
        self.adaptor.eval()
        try:
            with self.ema.swapped() if self.ema is not None else nullcontext():
                restored = restore(
                    self.components,
                    self.adaptor,
                    fixed.degraded.to(self.device),
                    fixed.restoration_prompts,
                    fixed.semantic_prompts,
                    steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    seed=settings.seed,
                    autocast=self.accelerator.autocast(),
                ).cpu()
        finally:
            self.adaptor.train()
        path, mean_psnr = save_validation(fixed, restored, self.output_dir / "validation", self.step)
        self.log.write("validation", step=self.step, path=str(path), psnr=mean_psnr)
        return path

    def close(self) -> None:
        """Close the log (TensorBoard writer)."""
        self.log.close()


def run_training(config: TrainingConfig) -> Trainer:
    """Build a ``Trainer`` and train to the end; returns it (with ``history``)."""
    trainer = Trainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer
