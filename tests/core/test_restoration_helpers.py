"""The pure restoration helpers the node and the pipeline share: padding to the VAE's multiple and up to
the smallest latent side, cropped back by the callers."""

from __future__ import annotations

import pytest
import torch

from spire_core.restoration import pad_to_multiple


@pytest.mark.parametrize(
    ("size", "multiple", "minimum", "padded"),
    [
        ((64, 64), 8, 32, (64, 64)),  # already fine: untouched
        ((45, 61), 8, 0, (48, 64)),
        ((45, 61), 8, 32, (48, 64)),
        ((8, 8), 8, 32, (32, 32)),  # too small for the model: padded up to the minimum
        ((1, 1), 8, 32, (32, 32)),
        ((5, 40), 8, 32, (32, 40)),
        ((33, 7), 8, 36, (40, 40)),  # a minimum that is no multiple rounds up to one
    ],
)
def test_padding_reaches_the_multiple_and_the_minimum(size, multiple, minimum, padded):
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    out = pad_to_multiple(image, multiple, minimum)
    assert tuple(out.shape[-2:]) == padded
    assert torch.equal(out[..., : size[0], : size[1]], image)  # the photo itself is unchanged, top left
    if padded == size:
        assert out is image


def test_padding_reflects_where_it_can_and_replicates_where_it_cannot():
    image = torch.arange(12.0).view(1, 1, 3, 4)
    reflected = pad_to_multiple(image, 2)  # 3 -> 4 rows: the row above the last, mirrored
    assert torch.equal(reflected[0, 0, 3], image[0, 0, 1])
    replicated = pad_to_multiple(image, 2, minimum=8)  # 5 rows more than a 3-row image can mirror
    assert torch.equal(replicated[0, 0, 7, :4], image[0, 0, 2]) and torch.equal(
        replicated[0, 0, 0, 7], image[0, 0, 0, 3]
    )
