"""Tiny random Stable-Diffusion-shaped models for tests, smoke runs and benchmarks (CPU, offline).

``write_tiny_base(folder)`` writes a complete diffusers folder (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, ``model_index.json``; for ``family="sdxl"`` also ``text_encoder_2/`` and
``tokenizer_2/``) that the trainer loads with exactly the code it uses for
real models; ``build_tiny_components()`` builds the same models in memory. Weights are random (seeded): these
models restore nothing, they only exercise the machinery.

The tokenizer is a real transformers ``CLIPTokenizer`` (byte-level BPE, CLIP's normalisation and special
tokens) built offline from a small vocabulary: the 256 byte symbols, each also as a word end, and whole-word
merges for the restoration-prompt verbs, so a four-clause prompt fits in 77 tokens.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..models import BaseModelInfo, tiny_unet_config
from ..models.components import SD_SCHEDULER_CONFIG, FrozenComponents

TINY_WORDS = (
    "upsample",
    "deblur",
    "denoise",
    "dejpeg",
    "with",
    "sigma",
    "quality",
    "by",
    "remove",
    "all",
    "degradation",
    "a",
    "the",
    "photo",
    "of",
)
"""Words the tiny tokenizer keeps whole (the restoration-prompt grammar and a few caption words)."""

TINY_TEXT_DIM = 32
"""Hidden size of the tiny text encoder = the tiny UNet's cross-attention dim."""


def tiny_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the tiny byte-level BPE (see the module docstring)."""
    from tokenizers import pre_tokenizers

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    for symbol in alphabet:
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = [pair[0] + pair[1], *symbols[2:]]
    return vocab, merges


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """Write the tiny tokenizer as a real SD ``tokenizer/`` folder: ``vocab.json``, ``merges.txt``,
    ``tokenizer_config.json``, ``special_tokens_map.json`` (readable by every transformers version)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocabulary()
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder


def tiny_tokenizer():  # noqa: ANN201 - transformers type
    """The tiny ``CLIPTokenizer`` (max length 77), loaded from files written to a temporary folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(folder)), local_files_only=True)


def tiny_text_encoder(vocab_size: int, seed: int = 0, projection: bool = False):  # noqa: ANN201 - transformers type
    """A 2-layer ``CLIPTextModel`` with hidden size ``TINY_TEXT_DIM``; with ``projection`` a
    ``CLIPTextModelWithProjection`` (SDXL's second encoder: its pooled embedding is ``TINY_TEXT_DIM`` wide)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TINY_TEXT_DIM,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_vae(seed: int = 0):  # noqa: ANN201 - diffusers type
    """An ``AutoencoderKL`` with SD's structure at toy width: 4 levels (8x downscale), 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 16, 32, 32],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def tiny_unet(family: str = "sd1", seed: int = 0):  # noqa: ANN201 - diffusers type
    """A ``UNet2DConditionModel`` from ``spire_core.models.tiny_unet_config``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    context = 2 * TINY_TEXT_DIM if family == "sdxl" else TINY_TEXT_DIM  # SDXL: two encoders side by side
    return UNet2DConditionModel(**tiny_unet_config(family, cross_attention_dim=context)).eval()


def tiny_scheduler_config(prediction_type: str = "epsilon") -> dict:
    """Stable Diffusion's DDPM schedule with the given prediction type."""
    return {**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type}


def build_tiny_components(family: str = "sd1", prediction_type: str = "epsilon", seed: int = 0) -> FrozenComponents:
    """The tiny models in memory, frozen (``base_family="custom"``, their UNet is not SD-sized; ``"sdxl"`` for
    ``family="sdxl"``, whose structure decides what an adaptor needs)."""
    tokenizer = tiny_tokenizer()
    unet = tiny_unet(family, seed)
    sdxl = family == "sdxl"
    info = BaseModelInfo(
        path=Path("<memory>"),
        source="memory",
        base_family="sdxl" if sdxl else "custom",
        prediction_type=prediction_type,
        prediction_type_source="argument",
        unet_config={k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
    )
    return FrozenComponents(
        unet=unet,
        vae=tiny_vae(seed + 1),
        text_encoder=tiny_text_encoder(len(tokenizer), seed + 2),
        tokenizer=tokenizer,
        scheduler_config=tiny_scheduler_config(prediction_type),
        info=info,
        text_encoder_2=tiny_text_encoder(len(tokenizer), seed + 3, projection=True) if sdxl else None,
        tokenizer_2=tiny_tokenizer() if sdxl else None,
    ).freeze()


def write_tiny_base(folder: str | Path, family: str = "sd1", prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny diffusers Stable Diffusion folder (safetensors weights) that ``load_components`` reads.

    Args:
        folder: created if missing; existing model files in it are overwritten.
        family: ``"sd1"``, ``"sd2"`` or ``"sdxl"`` UNet structure (``spire_core.models.tiny_unet_config``).
        prediction_type: written into ``scheduler/scheduler_config.json``.
        seed: weights are a function of it.

    Returns:
        ``folder``.
    """
    from diffusers import DDPMScheduler

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components = build_tiny_components(family, prediction_type, seed)
    components.unet.save_pretrained(folder / "unet", safe_serialization=True)
    components.vae.save_pretrained(folder / "vae", safe_serialization=True)
    components.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_tiny_tokenizer(folder / "tokenizer")
    DDPMScheduler.from_config(components.scheduler_config).save_config(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline" if components.sdxl else "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    if components.sdxl:
        components.text_encoder_2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
        write_tiny_tokenizer(folder / "tokenizer_2")
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return folder
