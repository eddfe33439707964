"""Semantic prompts are read as ComfyUI reads them (``spire_core.models.prompt_windows``): the same token
windows and weights as ComfyUI's own tokenizers for handmade and 300 random prompts (emphasis, escapes, unpaired
brackets, prompts of up to five windows), for SD1's CLIP-L, SD2's OpenCLIP-H (padding with 0) and SDXL's CLIP-L
and CLIP-G; refused text (a non-finite weight, a textual-inversion embedding) is what ComfyUI would have read as a
weight or an embedding."""

from __future__ import annotations

import pytest
import torch
from spire_test_support import tiny_comfy
from spire_test_support.export import export_tokenizer
from spire_test_support.prompts import PROMPT_TEXTS, fuzz_prompts

from spire_core.models.prompt_windows import PromptTextError, prompt_windows

TEXTS = (*PROMPT_TEXTS, *fuzz_prompts(300, seed=0))


@pytest.fixture(scope="module")
def tokenizers(comfy, tmp_path_factory):
    """pad -> our transformers tokenizer (ComfyUI's vocabulary, as the pipeline tests export it)."""
    from transformers import CLIPTokenizer

    out = {}
    for pad in ("end", "zero"):
        folder = tmp_path_factory.mktemp(f"tokenizer_{pad}")
        export_tokenizer(folder, pad)
        out[pad] = CLIPTokenizer.from_pretrained(folder)
    return out


def as_tensors(windows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's windows of (token, weight) pairs as (ids, float32 weights)."""
    ids = torch.tensor([[pair[0] for pair in window] for window in windows], dtype=torch.long)
    return ids, torch.tensor([[pair[1] for pair in window] for window in windows], dtype=torch.float32)


@pytest.mark.parametrize(
    ("family", "key", "pad"), [("sd1", "l", "end"), ("sd2", "h", "zero"), ("sdxl", "l", "end"), ("sdxl", "g", "zero")]
)
def test_windows_and_weights_are_comfyui_s(tokenizers, family, key, pad):
    clip = tiny_comfy.tiny_clip(family)
    counts = []
    for text in TEXTS:
        ids, weights = as_tensors(clip.tokenize(text)[key])
        ours = prompt_windows(tokenizers[pad], text)
        assert torch.equal(ours.ids, ids), text
        assert torch.equal(ours.weights, weights), text
        counts.append(ids.shape[0])
    # the texts cover one to five windows, most of them several, and weights other than 1
    assert min(counts) == 1 and max(counts) >= 4 and sum(c > 1 for c in counts) > len(TEXTS) // 2
    assert sum(prompt_windows(tokenizers[pad], t).weighted for t in TEXTS) > len(TEXTS) // 4


def test_refused_prompts_are_ones_comfyui_reads_as_weights_or_embeddings(tokenizers):
    """ComfyUI takes "(dog:nan)" as a NaN weight (a NaN conditioning) and "embedding:name" as a textual-inversion
    file from its embeddings folder; outside ComfyUI both are refused, with what to do."""
    clip = tiny_comfy.tiny_clip("sd1")
    weights = [pair[1] for pair in clip.tokenize("a (dog:nan) and a (cat:inf)")["l"][0]]
    assert any(w != w for w in weights) and float("inf") in weights
    with pytest.raises(PromptTextError, match=r"'nan'.*not a finite number"):
        prompt_windows(tokenizers["end"], "a (dog:nan) and a (cat:inf)")
    with pytest.raises(PromptTextError, match=r"'embedding:easynegative'.*models/embeddings"):
        prompt_windows(tokenizers["end"], "a photo, embedding:easynegative")
