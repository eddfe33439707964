"""A text prompt as CLIP token windows with per-token weights: the prompt language ComfyUI users write in.

ComfyUI (like other Stable Diffusion front ends) reads a prompt with two conventions that a plain
``tokenizer(text, truncation=True)`` does not know, so the same semantic prompt would condition the UNet
differently in a workflow and in ``SpirePipeline`` (or training). This module reads prompts the ComfyUI way,
so a prompt moved between the two means the same thing:

- **Emphasis.** ``(text)`` multiplies the weight of ``text`` by 1.1 (nested groups multiply), ``(text:1.3)``
  sets it to 1.3 (the number after the group's last colon; a group whose number does not parse keeps the 1.1
  and its colon text), and ``\\(`` / ``\\)`` are literal brackets. Brackets that do not pair up are text. A
  weight that is not a finite number (``(dog:nan)``, ``(dog:inf)``) is refused with ``PromptTextError``.
- **Long prompts.** A window holds the start token, up to ``L - 2`` prompt tokens, the end token and padding
  (``L`` = the tokenizer's ``model_max_length``, 77 for CLIP). A prompt that does not fit continues in further
  windows instead of being cut off: each weighted piece of text is one group of tokens, and a group shorter
  than 8 tokens that does not fit in the current window moves whole to the next one (the window is closed
  and padded), while a longer group is split at the window's edge.

The encoder then reads every window on its own; the windows' hidden states are concatenated along the
sequence (``encode_windows``), and a token of weight ``w != 1`` becomes ``empty + w * (hidden - empty)``,
``empty`` being the same position of an empty prompt's window (weight 1 leaves a token as it was).

Textual-inversion embeddings (``embedding:name``) need ComfyUI's embeddings folder; outside ComfyUI they are
refused with ``PromptTextError`` rather than read as words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

EMPHASIS = 1.1
"""Weight factor of one pair of brackets without a number."""
UNSPLIT_GROUP = 8
"""A token group shorter than this moves whole into the next window instead of being split across two."""
TILE_LIMIT = 4
"""Contexts of different lengths share a batch when their common length is at most this many times the longest
(``tile_contexts``); any mix of 1 to 4 windows does (at most 12 windows)."""
_OPEN, _CLOSE = "\ue000", "\ue001"  # escaped brackets while the groups are parsed (private-use characters)
_EMBEDDING = re.compile(r"(?:^|(?<=\s))embedding:(\S*)")


class PromptTextError(ValueError):
    """A prompt that cannot be encoded outside ComfyUI (non-finite weight, textual-inversion embedding)."""


@dataclass(frozen=True)
class PromptWindows:
    """One prompt as C windows of L tokens.

    Attributes:
        ids: (C, L) token ids.
        weights: (C, L) weight of each token (1 for the start, end and padding tokens).
    """

    ids: torch.Tensor
    weights: torch.Tensor

    @property
    def weighted(self) -> bool:
        """Whether any token has a weight other than 1."""
        return bool((self.weights != 1.0).any())


def _groups(text: str) -> list[str]:
    """Split text into bracket groups ``(...)`` at nesting level 0 and the plain text between them.

    A closing bracket with no opening one is text, and so is what follows it until brackets balance again;
    an opening bracket that is never closed leaves the rest of the text as one plain piece."""
    pieces, current, depth = [], "", 0
    for char in text:
        if char == "(" and depth == 0:
            if current:
                pieces.append(current)
            current, depth = "(", 1
        elif char == "(":
            current, depth = current + char, depth + 1
        elif char == ")" and depth == 1:
            pieces.append(current + char)
            current, depth = "", 0
        elif char == ")":
            current, depth = current + char, depth - 1
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _groups(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner, inner_weight = piece[1:-1], weight * EMPHASIS
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1 :])
            except ValueError:
                pass
            else:
                if not math.isfinite(inner_weight):
                    raise PromptTextError(
                        f"prompt weight {inner[colon + 1 :].strip()!r} in {piece!r} is not a finite number; write "
                        "(text:1.2), a finite weight"
                    )
                inner = inner[:colon]
        out += _weighted(inner, inner_weight)
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) pieces in order (see the module docstring for the syntax); checks the text
    alone, so a prompt can be refused before any model is loaded.

    Raises:
        PromptTextError: a weight that is not a finite number, or a textual-inversion embedding.
    """
    escaped = text.replace("\\)", _CLOSE).replace("\\(", _OPEN)
    try:
        weighted = _weighted(escaped, 1.0)
    except RecursionError:
        raise PromptTextError(
            "the prompt's brackets are nested too deeply to read; write (text:1.5) instead of many nested brackets"
        ) from None
    pieces = [(p.replace(_CLOSE, ")").replace(_OPEN, "("), weight) for p, weight in weighted]
    for piece, _ in pieces:  # a piece's start or any word in it (ComfyUI looks inside brackets too)
        found = _EMBEDDING.search(piece)
        if found:
            raise PromptTextError(
                f"the prompt names a textual-inversion embedding ({found.group(0)!r}); embeddings are read from "
                "ComfyUI's models/embeddings folder and only there: restore in ComfyUI, or write the prompt "
                "without it"
            )
    return pieces


def window_length(tokenizer: Any) -> int:
    """Tokens per window: the tokenizer's ``model_max_length`` (77 when it reports no limit)."""
    length = int(getattr(tokenizer, "model_max_length", 77))
    return 77 if length > 10_000 else length  # tokenizers without a limit report a huge sentinel


def special_tokens(tokenizer: Any) -> tuple[int, int, int]:
    """The tokenizer's (start, end, padding) token ids.

    Raises:
        ValueError: one is missing (a tokenizer folder that is not a CLIP tokenizer's, or an incomplete one).
    """
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    missing = [name for name, value in zip(("start (bos)", "end (eos)", "padding"), ids) if value is None]
    if missing:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}, {getattr(tokenizer, 'name_or_path', '?')}) has no "
            f"{' and no '.join(missing)} token; a Stable Diffusion tokenizer folder (tokenizer/ with "
            "special_tokens_map.json) names all three"
        )
    return ids


def prompt_windows(tokenizer: Any, text: str) -> PromptWindows:
    """``text`` as token windows with weights (the tokenizer's start, end and padding tokens).

    Raises:
        PromptTextError: see ``parse_weights``.
    """
    length = window_length(tokenizer)
    start, end, pad = special_tokens(tokenizer)
    room = length - 1  # the prompt tokens plus the start token; the end token closes every window
    windows: list[list[tuple[int, float]]] = [[(start, 1.0)]]
    for piece, weight in parse_weights(text):
        group = tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"] if piece else []
        split = len(group) >= UNSPLIT_GROUP
        while group:
            window = windows[-1]
            free = room - len(window)
            if len(group) <= free:
                window += [(token, weight) for token in group]
                break
            if split:
                window += [(token, weight) for token in group[:free]]
                group = group[free:]
            window.append((end, 1.0))
            window += [(pad, 1.0)] * (length - len(window))
            windows.append([(start, 1.0)])
    last = windows[-1]
    last.append((end, 1.0))
    last += [(pad, 1.0)] * (length - len(last))
    return PromptWindows(
        torch.tensor([[token for token, _ in w] for w in windows], dtype=torch.long),
        torch.tensor([[weight for _, weight in w] for w in windows], dtype=torch.float32),
    )


def empty_window(tokenizer: Any) -> torch.Tensor:
    """(1, L) ids of the empty prompt's window (start, end, padding): the reference that weights scale from."""
    start, end, pad = special_tokens(tokenizer)
    ids = [start, end] + [pad] * (window_length(tokenizer) - 2)
    return torch.tensor([ids], dtype=torch.long)


def tile_contexts(contexts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Contexts (B_i, T_i, D) repeated along the sequence to one length, the least common multiple of the T_i.

    Cross-attention over a context repeated k times gives exactly what it gives over the context once (each key
    appears k times with k times less weight each), so prompts of different window counts can share a batch;
    ComfyUI batches conditionings of different lengths the same way, up to the same bound (``TILE_LIMIT``).

    Raises:
        ValueError: the common length would be more than ``TILE_LIMIT`` times the longest context (e.g. prompts
            of 3, 4 and 5 windows, 60 windows each): the batch would cost far more than its longest prompt.
    """
    lengths = [int(c.shape[1]) for c in contexts]
    target = math.lcm(*lengths)
    if target > TILE_LIMIT * max(lengths):
        counts = sorted({length // math.gcd(*lengths) for length in lengths})
        raise ValueError(
            f"prompts of {counts} token windows cannot share a batch: repeated to a common length, each would be "
            f"{target // math.gcd(*lengths)} windows long (more than {TILE_LIMIT} times the longest); shorten the "
            "longest prompts, or restore those images in separate runs"
        )
    return [c if c.shape[1] == target else c.repeat(1, target // c.shape[1], 1) for c in contexts]


def encode_windows(
    tokenizer: Any,
    hidden: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    prompts: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states of ``prompts`` read as in the module docstring, and each prompt's first-window pooled output.

    Args:
        tokenizer: the text encoder's tokenizer.
        hidden: ids (N, L) -> ((N, L, D) hidden states, (N, P) pooled or ``None``), the encoder at its layer.
        prompts: B prompts.

    Returns:
        ((B, C * L, D) hidden states, C the largest window count's common multiple (``tile_contexts``); (B, P)
        pooled or ``None``), in the encoder's dtype.

    Raises:
        PromptTextError: see ``prompt_windows``.
    """
    read = [prompt_windows(tokenizer, text) for text in prompts]
    weighted = any(w.weighted for w in read)
    ids = [w.ids for w in read] + ([empty_window(tokenizer)] if weighted else [])
    states, pooled = hidden(torch.cat(ids))
    if weighted:
        empty = states[-1:].float()
        weights = torch.cat([w.weights for w in read]).to(states.device).unsqueeze(-1)
        scaled = empty + (states[:-1].float() - empty) * weights
        states = torch.where(weights != 1.0, scaled.to(states.dtype), states[:-1])
    firsts = torch.tensor([0] + [w.ids.shape[0] for w in read[:-1]]).cumsum(0)
    contexts, offset = [], 0
    for w in read:
        count = w.ids.shape[0]
        contexts.append(states[offset : offset + count].reshape(1, -1, states.shape[-1]))
        offset += count
    return torch.cat(tile_contexts(contexts)), None if pooled is None else pooled[firsts.to(pooled.device)]


__all__ = [
    "EMPHASIS",
    "UNSPLIT_GROUP",
    "PromptTextError",
    "PromptWindows",
    "TILE_LIMIT",
    "empty_window",
    "encode_windows",
    "parse_weights",
    "prompt_windows",
    "special_tokens",
    "tile_contexts",
    "window_length",
]
