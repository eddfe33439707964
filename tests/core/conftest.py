"""Shared fixtures for the core tier: real photos from scikit-image as BCHW float tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo as a (1, C, H, W) float32 tensor in [0, 1]."""
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div(255).unsqueeze(0)


@pytest.fixture(scope="session")
def astronaut() -> torch.Tensor:
    return photo("astronaut")


@pytest.fixture(scope="session")
def coffee() -> torch.Tensor:
    return photo("coffee")


@pytest.fixture(scope="session")
def chelsea() -> torch.Tensor:
    return photo("chelsea")


@pytest.fixture(scope="session")
def camera() -> torch.Tensor:
    return photo("camera")
