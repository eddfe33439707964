"""The prompt reader (``spire_core.models.prompt_windows``) on its own: the weights it reads, the windows it
builds, that tiling contexts leaves cross-attention unchanged, and what ``encode_prompts`` does with weights and
long prompts on a tiny SD1 base. Its agreement with ComfyUI's own tokenizers and encoders is proved in
tests/comfy/test_prompt_windows.py and the pipeline-vs-node tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spire_core.models.components import encode_prompts, load_components
from spire_core.models.prompt_windows import (
    PromptTextError,
    empty_window,
    parse_weights,
    prompt_windows,
    special_tokens,
    tile_contexts,
)
from spire_core.training.tiny import tiny_tokenizer, write_tiny_base


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("an astronaut", [("an astronaut", 1.0)]),
        ("a (cat:1.3) on ((mat))", [("a ", 1.0), ("cat", 1.3), (" on ", 1.0), ("mat", 1.1 * 1.1)]),
        ("((a:0.5) b)", [("a", 0.5), (" b", 1.1)]),  # a number sets the weight, brackets multiply it
        ("(a: 2 )", [("a", 2.0)]),
        ("(a:bad)", [("a:bad", 1.1)]),  # no number after the last colon: 1.1, the colon text stays
        ("(:2)", [(":2", 1.1)]),  # a colon first is text
        ("\\(a\\) (b\\))", [("(a) ", 1.0), ("b)", 1.1)]),  # escaped brackets are text
        ("a) (b", [("a) (b", 1.0)]),  # a closing bracket first: text until brackets balance
        ("x (y", [("x ", 1.0), ("(y", 1.0)]),  # an opening bracket never closed
        ("()", []),
    ],
)
def test_weights_are_read_as_written(text, pieces):
    assert parse_weights(text) == pieces


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a (dog:nan)", r"'nan' in '\(dog:nan\)' is not a finite number"),
        ("a ((dog:-inf))", r"'-inf' .* not a finite number"),
        ("embedding:easynegative, a dog", r"textual-inversion embedding \('embedding:easynegative,'\)"),
        ("a dog (embedding:style:1.2)", r"textual-inversion embedding \('embedding:style'\)"),
        ("a dog\nembedding:style", r"textual-inversion embedding"),
    ],
)
def test_prompts_that_cannot_be_encoded_are_refused(text, message):
    with pytest.raises(PromptTextError, match=message):
        parse_weights(text)


def test_deeply_nested_brackets_are_refused_not_a_crash():
    with pytest.raises(PromptTextError, match="nested too deeply"):
        parse_weights("(" * 5000 + "a" + ")" * 5000)
    assert parse_weights("(" * 20 + "a" + ")" * 20) == [("a", pytest.approx(1.1**20))]


def test_a_tokenizer_without_its_special_tokens_is_refused():
    tokenizer = tiny_tokenizer()
    assert special_tokens(tokenizer) == (0, 1, 1)  # the tiny vocabulary: start 0, end 1, padding with the end
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="has no padding token; a Stable Diffusion tokenizer folder"):
        prompt_windows(tokenizer, "a zebra")


def test_embedding_inside_a_word_is_text():
    assert parse_weights("myembedding:x") == [("myembedding:x", 1.0)]


def test_long_prompts_continue_in_further_windows():
    tokenizer = tiny_tokenizer()
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    text = " ".join(["zebra"] * 48)  # 240 byte tokens in one group: split at each window's edge
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = prompt_windows(tokenizer, text)
    assert len(tokens) == 240 and windows.ids.shape == (4, 77)  # 75 + 75 + 75 + 15
    assert windows.ids[:, 0].tolist() == [start] * 4
    assert windows.ids[:3, 76].tolist() == [end] * 3
    body = windows.ids[:, 1:76].reshape(-1)[:240]
    assert body.tolist() == tokens and windows.ids[3, 16].item() == end
    assert not windows.weighted and torch.equal(empty_window(tokenizer)[0, :2], torch.tensor([start, end]))

    # a short weighted group that does not fit moves whole into the next window; the current one is padded
    first = "y" * 73  # 73 tokens
    moved = prompt_windows(tokenizer, first + "(abc:1.5)")
    assert moved.ids.shape == (2, 77)
    assert moved.ids[0, 74].item() == end and moved.ids[0, 75:].tolist() == [tokenizer.pad_token_id] * 2
    assert moved.weights[1, 1:4].tolist() == [1.5] * 3 and float(moved.weights[0].max()) == 1.0


def test_tiled_contexts_leave_cross_attention_unchanged():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 16, 8, generator=generator, dtype=torch.float64)
    short = torch.randn(2, 77, 32, generator=generator, dtype=torch.float64)
    long = torch.randn(2, 154, 32, generator=generator, dtype=torch.float64)
    tiled_short, tiled_long = tile_contexts([short, long])
    assert tiled_short.shape == tiled_long.shape == (2, 154, 32) and tiled_long is long
    assert [c.shape[1] for c in tile_contexts([short, long, torch.cat([long, short], 1)])] == [462] * 3

    def attend(context):  # keys and values: the context in 4 heads of 8
        kv = context.reshape(2, -1, 4, 8).transpose(1, 2)
        return F.scaled_dot_product_attention(query, kv, kv)

    assert float((attend(tiled_short) - attend(short)).abs().max()) < 1e-12

    def windows(*counts):
        return [torch.zeros(1, 77 * c, 4) for c in counts]

    assert [c.shape[1] for c in tile_contexts(windows(1, 2, 3, 4))] == [12 * 77] * 4  # within 4 x the longest
    with pytest.raises(ValueError, match=r"prompts of \[3, 4, 5\] token windows cannot share a batch.*60 windows"):
        tile_contexts(windows(3, 4, 5))


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return load_components(write_tiny_base(tmp_path_factory.mktemp("tiny-sd")))


def test_weights_scale_each_token_from_the_empty_prompt(components):
    with torch.no_grad():
        plain = encode_prompts(components, ["a zebra"])
        empty = encode_prompts(components, [""])
        weighted = encode_prompts(components, ["a (zebra:1.7)"])
        unit = encode_prompts(components, ["a (zebra:1.0)"])
    windows = prompt_windows(components.tokenizer, "a (zebra:1.7)")
    mask = (windows.weights[0] != 1.0).unsqueeze(-1)
    assert int(mask.sum()) == 5  # the byte tokens of "zebra"
    expected = torch.where(mask, empty + 1.7 * (plain - empty), plain)
    assert float((weighted - expected).abs().max()) < 1e-5
    assert float((weighted - plain).abs().max()) > 0.01  # the weight moved those tokens
    assert torch.equal(unit, plain)  # weight 1 is no weight


def test_long_prompts_encode_every_window_and_batch_by_tiling(components):
    long = " ".join(["zebra"] * 20)  # 100 tokens: two windows
    with torch.no_grad():
        alone = encode_prompts(components, [long])
        batch = encode_prompts(components, ["a zebra", long, long])
        first = encode_prompts(
            components, [components.tokenizer.decode(prompt_windows(components.tokenizer, long).ids[0, 1:76])]
        )
    assert alone.shape[1] == 154 and batch.shape[:2] == (3, 154)
    assert float((batch[1:] - alone).abs().max()) < 1e-5
    assert float((batch[0, :77] - batch[0, 77:]).abs().max()) == 0.0  # the one-window prompt, twice
    assert float((alone[0, :77] - first[0]).abs().max()) < 1e-5  # the first window is the prompt's first 75 tokens
