"""The SPIRE adaptor as a ComfyUI control object (design.md section 3; comfyui-internals.md section 5, option B).

``SpireControl`` travels as the core ``CONTROL_NET`` type. ComfyUI calls ``get_control`` once per model
call; it runs the adaptor on the noisy latent, the timestep, the degraded image (hint) and the
restoration-prompt embedding (its own, set by 'Apply Adaptor (SPIRE)', else the conditioning's
``crossattn_controlnet`` as core ControlNets read it), and

- modulation fusion (SPIRE): registers an ``output_block_patch`` on a copy of
  ``transformer_options["patches"]`` that turns each skip ``hsp`` into ``hsp * (1 + s*gamma) + s*beta``
  (and ``h`` at output block 0, the middle-block output, likewise), then returns the previous control
  in the chain unchanged: nothing additive;
- additive fusion (plain ControlNet, for ablations): returns ControlNet-style residuals merged with
  the previous control, as ComfyUI's own ControlNet does.

It relies on ``get_control`` receiving the very ``transformer_options`` dict that then reaches the
UNet (true in ``comfy.samplers._calc_cond_batch``); a test pins that.
"""

from __future__ import annotations

import copy
import logging

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from comfy.controlnet import ControlBase, broadcast_image_to

from ..spire_core.models.modulation import modulate

HINT_UPSCALE = "bicubic"
"""How the degraded image is resized to the output size when they differ ("Upsample by Nx")."""


def patcher_class() -> type:
    """The patcher class core uses for its own controls: ``CoreModelPatcher`` where it exists (ComfyUI 0.16+, which
    ``main.py`` rebinds to the dynamic-VRAM patcher on CUDA after import, hence resolved at call time), else the
    legacy ``ModelPatcher`` (0.3.64)."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def make_patcher(adaptor: torch.nn.Module, load_device) -> comfy.model_patcher.ModelPatcher:
    """A patcher that loads ``adaptor`` to ``load_device`` and offloads it as core does its ControlNets."""
    offload = comfy.model_management.unet_offload_device()
    return patcher_class()(adaptor, load_device=load_device, offload_device=offload)


_warned: set[str] = set()


def _warn_numbers_unknown() -> None:
    """Once per process: the adaptor has a numeric channel but the prompt came without its numbers."""
    if "numbers" not in _warned:
        _warned.add("numbers")
        logging.warning(
            "SPIRE: this adaptor reads the restoration prompt's numbers through its numeric channel, but the prompt "
            "reached it as a CLIP embedding alone (core 'Apply ControlNet' after 'Encode Restoration Prompt'); it "
            "restores from CLIP only. Use 'Apply Adaptor (SPIRE)' or 'Restore (SPIRE)' for the numbers to steer."
        )


def _per_item(tensor: torch.Tensor, batch: int, batched_number: int) -> torch.Tensor:
    """One row per image of the batch: a single row for all, or one per image (like the hint)."""
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    return broadcast_image_to(tensor, batch, batched_number)


class SpireModulationPatch:
    """``output_block_patch``: modulate the skip (and, at output block 0, the middle feature).

    Args:
        gammas, betas: per UNet input block j (0 = after conv_in), (B, C_j, H_j, W_j).
        gamma_mid, beta_mid: for the middle-block output.
        strength: s in ``f * (1 + s*gamma) + s*beta``.
    """

    def __init__(self, gammas, betas, gamma_mid, beta_mid, strength: float, run_state: dict | None = None) -> None:
        self.gammas = gammas
        self.betas = betas
        self.gamma_mid = gamma_mid
        self.beta_mid = beta_mid
        self.strength = strength
        self.run_state = {} if run_state is None else run_state  # the control's: "ran" is set by any call

    @staticmethod
    def _modulate(feature: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, s: float) -> torch.Tensor:
        if gamma.shape != feature.shape:
            raise RuntimeError(
                f"SPIRE adaptor output {tuple(gamma.shape)} does not fit the UNet feature {tuple(feature.shape)}: "
                "the adaptor was made for a different base model"
            )
        return modulate(feature, gamma, beta, s)

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor | None, transformer_options: dict):
        self.run_state["ran"] = True
        if hsp is None:
            raise RuntimeError(
                "SPIRE cannot modulate this model's skip connections: another output-block patch on the model "
                "already fused them into the features (it passed hsp=None, as core's SUPIR patch does). Use one "
                "skip-fusing adaptor per model: remove the other patch, or the SPIRE adaptor."
            )
        block = transformer_options.get("block", ("output", 0))
        index = len(self.gammas) - 1 - block[1]  # output block k receives the skip of input block N-1-k
        s = self.strength
        hsp = self._modulate(hsp, self.gammas[index], self.betas[index], s)
        if block[1] == 0:
            h = self._modulate(h, self.gamma_mid, self.beta_mid, s)
        return h, hsp


class SpireControl(ControlBase):
    """A ComfyUI control object running a SPIRE adaptor (see the module docstring).

    Args:
        adaptor: the ComfyUI-layout adaptor module (``adaptor_model.ComfyAdaptor``), built with comfy.ops.
        load_device: where to run it; ``ModelPatcher`` moves it there (and offloads it) like a ControlNet.
        manual_cast_dtype: compute dtype when the weights are stored in another dtype.
        info: metadata of the adaptor file (fusion, base family, prompt grammar, ...), for errors and UI.
    """

    def __init__(self, adaptor=None, load_device=None, manual_cast_dtype=None, info=None) -> None:
        super().__init__()
        self.adaptor = adaptor
        self.load_device = load_device
        self.manual_cast_dtype = manual_cast_dtype
        self.info = dict(info or {})
        self.upscale_algorithm = HINT_UPSCALE
        self.restoration_embedding = None  # (N, T, D); when set it takes precedence over crossattn_controlnet
        self.restoration_features = None  # (N, F) numeric-channel features of the same prompts, or None
        self.restoration_pooled = None  # (N, P) pooled embeddings of the same prompts (SDXL adaptors), or None
        self.run_state = {"registered": 0, "ran": False}  # this sampling run: patches registered, any ran?
        self.model_sampling_current = None
        self.base_model_config = None
        if adaptor is not None:
            self.adaptor_patcher = make_patcher(adaptor, load_device)

    # -- the ControlBase protocol ------------------------------------------------------------------
    def copy(self) -> SpireControl:
        c = SpireControl(None, load_device=self.load_device, manual_cast_dtype=self.manual_cast_dtype, info=self.info)
        c.adaptor = self.adaptor
        c.adaptor_patcher = self.adaptor_patcher
        c.set_restoration(self.restoration_embedding, self.restoration_pooled, self.restoration_features)
        self.copy_to(c)
        return c

    def set_restoration(self, embedding, pooled, features) -> SpireControl:
        """Give this control its restoration prompt: (N, T, D) embedding, (N, P) pooled embedding (or None) and
        (N, F) numeric features (or None); N is 1 or the batch. Returns ``self``."""
        self.restoration_embedding, self.restoration_pooled, self.restoration_features = embedding, pooled, features
        return self

    def deepclone_multigpu(self, load_device, autoregister: bool = False) -> SpireControl:
        """A copy with its own adaptor module and patcher on ``load_device`` (ComfyUI 0.23+ multi-GPU work units
        call this per extra device; ``autoregister`` records it in ``multigpu_clones`` as core's controls do)."""
        c = self.copy()
        c.adaptor = copy.deepcopy(self.adaptor)
        c.load_device = load_device
        c.adaptor_patcher = make_patcher(c.adaptor, load_device)
        if autoregister:
            clones = getattr(self, "multigpu_clones", None)
            if clones is None:  # ComfyUI before multi-GPU work units has no registry of its own
                clones = self.multigpu_clones = {}
            clones[load_device] = c
        return c

    def get_models(self):
        return [*super().get_models(), self.adaptor_patcher]

    def pre_run(self, model, percent_to_timestep_function) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.adaptor.check_fits(model)
        self.model_sampling_current = model.model_sampling
        self.run_state = {"registered": 0, "ran": False}

    def cleanup(self) -> None:
        self.model_sampling_current = None
        self.run_state = {"registered": 0, "ran": False}
        super().cleanup()

    def inference_memory_requirements(self, dtype) -> int:
        # activations of the trunk are of the order of the UNet encoder's; gammas/betas add one set of skips
        return super().inference_memory_requirements(dtype)

    # -- running the adaptor -----------------------------------------------------------------------
    def _hint(self, x_noisy: torch.Tensor, batched_number: int, dtype, tile=None) -> torch.Tensor:
        """The degraded image at the output size (resized once, "Upsample by Nx"), cropped to ``tile``
        ((top, left, height, width, full_height, full_width) in latent cells) when sampling is tiled."""
        ratio = self.compression_ratio
        full_h, full_w = (tile[4], tile[5]) if tile is not None else tuple(x_noisy.shape[-2:])
        height, width = full_h * ratio, full_w * ratio
        if self.cond_hint is None or tuple(self.cond_hint.shape[-2:]) != (height, width):
            hint = self.cond_hint_original
            if tuple(hint.shape[-2:]) != (height, width):
                hint = comfy.utils.common_upscale(hint, width, height, self.upscale_algorithm, "center")
            self.cond_hint = hint.to(device=x_noisy.device, dtype=dtype)
        hint = self.cond_hint
        if tile is not None:
            top, left, tile_h, tile_w = (v * ratio for v in tile[:4])
            hint = hint[..., top : top + tile_h, left : left + tile_w]
        if hint.shape[0] != x_noisy.shape[0]:
            return broadcast_image_to(hint, x_noisy.shape[0], batched_number)
        return hint

    def _added_conditioning(self, cond, batch: int, batched_number: int, dtype):
        """SDXL adaptors: the model's own size conditioning ``y`` with its pooled-text part replaced by the
        restoration prompt's pooled embedding (the adaptor never sees the semantic prompt); None otherwise."""
        width = self.adaptor.spire_kwargs.get("adm_in_channels")
        if not width:
            return None
        y, pooled = cond.get("y"), self.restoration_pooled
        if pooled is None:
            raise ValueError(
                "This SDXL SPIRE adaptor needs the restoration prompt's pooled embedding: attach it with 'Apply "
                "Adaptor (SPIRE)' or restore with 'Restore (SPIRE)' (core 'Apply ControlNet' does not pass it on)."
            )
        if y is None or y.shape[-1] != width or pooled.shape[-1] >= width:
            raise ValueError(
                f"This SDXL SPIRE adaptor takes {width} values of added conditioning (pooled text, then size ids), but "
                f"the model gives {None if y is None else y.shape[-1]} and the restoration prompt's pooled embedding "
                f"has {pooled.shape[-1]}: use the adaptor with the SDXL checkpoint (and its CLIP) it was made for."
            )
        pooled = comfy.model_management.cast_to_device(_per_item(pooled, batch, batched_number), y.device, y.dtype)
        return torch.cat([pooled, y[:, pooled.shape[-1] :]], dim=1).to(dtype)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        context, features = self.restoration_embedding, None
        if context is not None:  # one prompt per image of the batch, or one for all (like the hint)
            context = _per_item(context, x_noisy.shape[0], batched_number)
            if self.restoration_features is not None:
                features = _per_item(self.restoration_features, x_noisy.shape[0], batched_number)
        else:
            context = cond.get("crossattn_controlnet")
        if context is None:
            raise ValueError(
                "The SPIRE adaptor needs a restoration prompt on the conditioning. Use 'Apply Adaptor (SPIRE)', or "
                "'Encode Restoration Prompt (SPIRE)' / core 'CLIPTextEncodeControlnet' on the conditioning "
                "before 'Apply ControlNet' (SD 1.x/2.x adaptors only: an SDXL adaptor needs 'Apply Adaptor (SPIRE)')."
            )
        dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.adaptor.dtype
        hint = self._hint(x_noisy, batched_number, dtype, transformer_options.get("spire_tile"))
        timestep = self.model_sampling_current.timestep(t).to(dtype)
        x = self.model_sampling_current.calculate_input(t, x_noisy).to(dtype)
        context = comfy.model_management.cast_to_device(context, x_noisy.device, dtype)
        if features is None and self.adaptor.spire_numeric is not None:
            _warn_numbers_unknown()
        y = self._added_conditioning(cond, x_noisy.shape[0], batched_number, dtype)
        out = self.adaptor(x=x, hint=hint, timesteps=timestep, context=context, y=y, numeric_features=features)
        if self.adaptor.fusion == "additive":
            control = {"output": out["output"], "middle": out["middle"]}
            return self.control_merge(control, control_prev, output_dtype=None)
        # No silent no-op: the patches of this run must reach the UNet. Any one having run is enough (caching nodes
        # such as core's EasyCache skip whole UNet calls after the first steps, legitimately).
        if self.run_state["registered"] and not self.run_state["ran"]:
            raise RuntimeError(
                "SPIRE's modulation never reached the model: the patch registered at the previous step did not run "
                "in the UNet. This ComfyUI no longer passes the options given to a control's get_control on to the "
                "UNet, so the adaptor would silently do nothing; SPIRE needs updating for this ComfyUI version."
            )
        self.run_state["registered"] += 1
        gammas, betas = out["gamma"], out["beta"]
        patch = SpireModulationPatch(gammas, betas, out["gamma_mid"], out["beta_mid"], self.strength, self.run_state)
        patches = dict(transformer_options.get("patches", {}))
        patches["output_block_patch"] = [*patches.get("output_block_patch", []), patch]
        transformer_options["patches"] = patches
        return control_prev
