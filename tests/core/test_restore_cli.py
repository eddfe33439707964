"""The README's main-job command: restores the bundled sample photo end to end with a configured base model
and adaptor (tiny diffusers models here), and says exactly which files go where when they are missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from spire_test_support.adaptors import randomize_heads

from spire_core.imageio import load_image
from spire_core.models import SpireAdaptor, load_base_unet, save_adaptor
from spire_core.restoration.__main__ import WHAT_GOES_WHERE, main
from spire_core.training import write_tiny_base

SAMPLE = "docs/samples/astronaut.png"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("restore_cli")
    base = write_tiny_base(folder / "tiny_sd1")
    unet, info = load_base_unet(base)
    adaptor = SpireAdaptor.from_unet(unet, base_family="sd1", prediction_type=info.prediction_type)
    randomize_heads(adaptor, seed=0, scale=0.05)
    return base, save_adaptor(adaptor, folder / "adaptor.safetensors"), folder


def test_missing_files_say_what_goes_where(tmp_path, capsys, monkeypatch):
    for name in ("SPIRE_BASE", "SPIRE_COMPONENTS", "SPIRE_ADAPTOR"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--image", SAMPLE, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no base model given" in err and "no SPIRE adaptor given" in err and WHAT_GOES_WHERE in err
    assert "ComfyUI/models/spire" in err and "ComfyUI/models/checkpoints" in err
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    assert main(["--image", SAMPLE, "--out", str(tmp_path / "x.png"), "--base", str(single), "--adaptor", "nope"]) == 2
    err = capsys.readouterr().err
    assert "is a single file: give --components" in err and "adaptor nope does not exist" in err
    assert not (tmp_path / "x.png").exists()


def test_bad_settings_fail_before_any_model_loads(tmp_path, capsys):
    args = ["--image", SAMPLE, "--out", str(tmp_path / "x.png"), "--base", "missing", "--adaptor", "missing"]
    assert main([*args, "--tile-size", "64", "--tile-overlap", "32"]) == 2
    assert "tile_overlap (32) must be less than half of tile_size (64)" in capsys.readouterr().err
    assert main([*args, "--denoise", "0"]) == 2
    assert "denoise must be in (0, 1]" in capsys.readouterr().err
    assert main([*args, "--semantic", "a (dog:nan) on grass"]) == 2  # ComfyUI would read a NaN weight
    assert "prompt weight 'nan' in '(dog:nan)' is not a finite number" in capsys.readouterr().err


def test_restores_the_bundled_sample_end_to_end(models, tmp_path, capsys):
    base, adaptor, folder = models
    small = folder / "astronaut_small.png"
    Image.open(SAMPLE).convert("RGB").resize((60, 44), Image.Resampling.BICUBIC).save(small)
    out = tmp_path / "restored.png"
    code = main(
        [
            "--image",
            str(small),
            "--out",
            str(out),
            "--base",
            str(base),
            "--adaptor",
            str(adaptor),
            "--steps",
            "2",
            "--restoration",
            "Denoise with sigma 0.05",
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    restored = load_image(out)
    assert restored.shape == (1, 3, 44, 60)
    assert float(restored.std()) > 0.01 and np.isfinite(restored.numpy()).all()
    printed = capsys.readouterr()
    assert "wrote" in printed.out and "untrained" not in printed.err
    # an untrained adaptor (as `models init` writes it) restores too, and says what that means
    unet, info = load_base_unet(base)
    fresh = save_adaptor(
        SpireAdaptor.from_unet(unet, prediction_type=info.prediction_type), folder / "fresh.safetensors"
    )
    args = ["--image", str(small), "--out", str(tmp_path / "identity.png"), "--base", str(base), "--steps", "2"]
    assert main([*args, "--adaptor", str(fresh)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {fresh} is untrained: its modulation heads are all zero" in err and "ignores the photo" in err


def test_a_wrong_adaptor_is_refused_with_what_it_is(models, tmp_path, capsys):
    base, _, folder = models
    wrong = folder / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"control_model.zero_convs.0.0.weight": torch.zeros(4, 4, 1, 1)}, str(wrong))
    code = main(
        [
            "--image",
            SAMPLE,
            "--out",
            str(tmp_path / "x.png"),
            "--base",
            str(base),
            "--adaptor",
            str(wrong),
            "--steps",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "plain ControlNet" in capsys.readouterr().err
