"""spire_core.models on disk: the adaptor safetensors format, validation of every kind of wrong file, loading
base UNets offline, the ``python -m spire_core.models`` CLI and the ComfyUI ``cldm`` layout (tiny random
diffusers models on the CPU)."""

from __future__ import annotations

import json
import math
import os
import pickle  # noqa: TID251  (only to write a pickle file; nothing here ever unpickles)
import re
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spire_core.models import (
    FORMAT_VERSION,
    LDM_UNET_PREFIX,
    AdaptorConfig,
    AdaptorFileError,
    BaseModelFileError,
    SpireAdaptor,
    adaptor_parameter_counts,
    check_fits_unet,
    diffusers_to_ldm_unet,
    expected_file_shapes,
    identify,
    load_adaptor,
    load_base_unet,
    predict_noise,
    read_adaptor_file,
    read_safetensors_header,
    save_adaptor,
    tiny_unet_config,
)
from spire_core.models.__main__ import main as cli_main
from spire_core.models.checkpoint import TRAINING_STEP_KEY, untrained_reason
from spire_core.models.comfy_layout import ComfyLayoutError, cldm_kwargs, level_heads, to_cldm_state_dict
from spire_core.models.safetensors_header import MAX_HEADER_BYTES
from spire_core.prompt import GRAMMAR_VERSION

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("sd1", "sd2")
FUSIONS = ("modulation", "additive")
FAKE_VAE_AND_TEXT_ENCODER = {
    "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
    "first_stage_model.decoder.conv_out.bias": (3,),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (16, 32),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (32,),
}


# --- helpers ---------------------------------------------------------------------------------------------


def make_unet(family: str = "sd1", seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config(family)).eval().requires_grad_(False)


def inputs(unet: UNet2DConditionModel, batch: int = 2, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    dim = unet.config.cross_attention_dim
    sample = torch.randn(batch, 4, size, size, generator=g)
    semantic = torch.randn(batch, 7, dim, generator=g)
    restoration = torch.randn(batch, 5, dim, generator=g)
    hint = torch.rand(batch, 3, 8 * size, 8 * size, generator=g)
    timestep = torch.tensor([10, 500][:batch])
    return sample, timestep, semantic, restoration, hint


def base_output(unet, sample, timestep, semantic) -> torch.Tensor:
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=semantic).sample


def randomize(adaptor: SpireAdaptor, seed: int, scale: float = 0.05) -> SpireAdaptor:
    """Give the zero-initialised heads (modulation) or zero convs (additive) random values, so that a round
    trip that lost them would show."""
    g = torch.Generator().manual_seed(seed)
    if adaptor.fusion == "modulation":
        params = list(adaptor.head_parameters())
    else:
        cn = adaptor.controlnet
        params = [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters()]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return adaptor


def ldm_tensors(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet in the original single-file layout, with the ``model.diffusion_model.`` prefix."""
    ldm = diffusers_to_ldm_unet(unet.state_dict(), unet.config)
    return {LDM_UNET_PREFIX + key: value.contiguous() for key, value in ldm.items()}


def write_checkpoint(
    path: Path, unet: UNet2DConditionModel, metadata: dict[str, str] | None = None, v_pred: bool = False
) -> Path:
    """A single-file SD checkpoint: UNet in the original layout plus a few VAE / text-encoder tensors."""
    tensors = ldm_tensors(unet)
    g = torch.Generator().manual_seed(123)
    tensors.update({key: torch.randn(shape, generator=g) for key, shape in FAKE_VAE_AND_TEXT_ENCODER.items()})
    if v_pred:
        tensors["v_pred"] = torch.tensor([])
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_diffusers_folder(folder: Path, unet: UNet2DConditionModel, prediction_type: str | None) -> Path:
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    if prediction_type is not None:
        (folder / "scheduler").mkdir(parents=True)
        scheduler = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "prediction_type": prediction_type}
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def file_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def rewrite(path: Path, out: Path, change, metadata: dict[str, str] | None = None) -> Path:
    """Copy a safetensors file through ``change(tensors) -> tensors``, keeping its metadata (or replacing it)."""
    tensors = change(dict(load_file(str(path))))
    save_file(tensors, str(out), metadata=file_metadata(path) if metadata is None else metadata)
    return out


def numel(state) -> int:
    return sum(t.numel() for t in state.values())


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def unets() -> dict[str, UNet2DConditionModel]:
    return {family: make_unet(family, seed=i) for i, family in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def checkpoints(unets, tmp_path_factory) -> dict[str, Path]:
    """One single-file checkpoint per tiny family (no metadata)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {family: write_checkpoint(folder / f"{family}.safetensors", unet) for family, unet in unets.items()}


@pytest.fixture(scope="module")
def adaptor_file(unets, tmp_path_factory) -> Path:
    """A valid sd1 modulation adaptor with non-zero heads."""
    adaptor = randomize(SpireAdaptor.from_unet(unets["sd1"], base_family="sd1"), seed=4)
    return save_adaptor(adaptor, tmp_path_factory.mktemp("adaptor") / "adaptor.safetensors")


# --- 1. save / load round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_load_round_trip_is_bit_identical(unets, tmp_path, fusion):
    unet = unets["sd1"]
    adaptor = randomize(SpireAdaptor.from_unet(unet, fusion=fusion, base_family="sd1"), seed=3)
    path = save_adaptor(adaptor, tmp_path / "sub" / "a.safetensors", extra_metadata={"training_step": "1200"})
    assert path == tmp_path / "sub" / "a.safetensors" and leftovers(path.parent, {"a.safetensors"}) == []

    loaded = load_adaptor(path)
    assert loaded.config == adaptor.config and loaded.fusion == fusion and not loaded.training
    original, restored = adaptor.file_state_dict(), loaded.file_state_dict()
    assert sorted(restored) == sorted(original) and len(original) > 50
    for key, value in original.items():
        assert restored[key].dtype == value.dtype == torch.float32, key
        assert torch.equal(restored[key], value), key
    heads = [k for k in original if k.startswith("spire_") and not k.startswith("spire_numeric.")]
    assert len(heads) == (4 * 4 + 4 if fusion == "modulation" else 0)  # 4 skips x gamma/beta x weight/bias + mid
    numeric = sorted(k for k in original if k.startswith("spire_numeric."))
    assert numeric == [
        "spire_numeric.fc1.bias",
        "spire_numeric.fc1.weight",
        "spire_numeric.fc2.bias",
        "spire_numeric.fc2.weight",
    ]
    assert any(float(original[k].abs().max()) > 0 for k in heads or ["controlnet_mid_block.weight"])

    # and it still computes the same thing
    sample, timestep, semantic, restoration, hint = inputs(unet)
    with torch.no_grad():
        before = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint)
        after = predict_noise(unet, loaded, sample, timestep, semantic, restoration, hint)
    assert torch.equal(before, after)
    assert float((before - base_output(unet, sample, timestep, semantic)).abs().max()) > 1e-4

    metadata = file_metadata(path)
    assert metadata["format"] == "pt" and metadata["training_step"] == "1200"
    assert metadata["spire.format_version"] == "2"  # format 2: with the numeric channel (3 only for narrow trunks)
    assert FORMAT_VERSION == 3
    assert metadata["spire.numeric_tokens"] == "4" and metadata["spire.numeric_features_version"] == "1"
    assert metadata["spire.fusion"] == fusion
    assert metadata["spire.base_family"] == "sd1"
    assert metadata["spire.prediction_type"] == "epsilon"
    assert metadata["spire.text_encoder_layer"] == "last"
    assert metadata["spire.prompt_grammar_version"] == str(GRAMMAR_VERSION)
    assert metadata["spire.hint_channels"] == "3"
    controlnet_config = json.loads(metadata["spire.controlnet_config"])
    assert controlnet_config == adaptor.config.controlnet_config
    assert controlnet_config["block_out_channels"] == [32, 64] and controlnet_config["attention_head_dim"] == 8
    assert AdaptorConfig.from_metadata(metadata) == adaptor.config


def test_round_trip_keeps_non_default_config_and_dtype(unets, tmp_path):
    adaptor = SpireAdaptor.from_unet(
        unets["sd2"], base_family="sd2", prediction_type="v_prediction", prompt_grammar_version=7
    ).half()
    path = save_adaptor(adaptor, tmp_path / "half.safetensors")
    header = read_safetensors_header(path)
    assert {info["dtype"] for info in header.tensors.values()} == {"F16"}
    metadata = header.metadata
    assert (metadata["spire.base_family"], metadata["spire.prediction_type"]) == ("sd2", "v_prediction")
    assert (metadata["spire.text_encoder_layer"], metadata["spire.prompt_grammar_version"]) == ("penultimate", "7")
    loaded = load_adaptor(path)
    assert loaded.config == adaptor.config and loaded.config.text_encoder_layer == "penultimate"
    assert all(p.dtype == torch.float16 for p in loaded.parameters())
    as_float = load_adaptor(path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in as_float.parameters())
    for key, value in adaptor.file_state_dict().items():
        assert torch.equal(as_float.file_state_dict()[key], value.float()), key


def test_read_adaptor_file_and_header_agree_with_the_adaptor(adaptor_file):
    config, state = read_adaptor_file(adaptor_file)
    header = read_safetensors_header(adaptor_file)
    assert header.file_size == adaptor_file.stat().st_size
    assert identify(header) == ("spire_adaptor", "a SPIRE adaptor")
    assert header.shapes() == {key: tuple(t.shape) for key, t in state.items()} == expected_file_shapes(config)
    assert header.parameter_count() == numel(state)
    assert header.parameter_count("spire_") == sum(t.numel() for k, t in state.items() if k.startswith("spire_"))
    # the heads: 1x1 convs C -> C for skips of 32, 32, 32, 64 channels and a 64-channel middle block
    head_count = 2 * sum(c * c + c for c in (32, 32, 32, 64)) + 2 * (64 * 64 + 64)
    # the numeric channel: features (43) -> 32 -> 4 tokens x 32 (the cross-attention width)
    numeric_count = (43 * 32 + 32) + (32 * 4 * 32 + 4 * 32)
    counts = adaptor_parameter_counts(header.shapes())
    trunk = numel(state) - head_count - numeric_count
    assert counts == {"trunk": trunk, "heads": head_count, "numeric": numeric_count, "total": numel(state)}
    # the safetensors header is exactly what safetensors itself reads
    assert header.metadata == file_metadata(adaptor_file)


def test_save_is_atomic(unets, tmp_path, monkeypatch):
    adaptor = SpireAdaptor.from_unet(unets["sd1"])
    path = save_adaptor(adaptor, tmp_path / "a.safetensors")
    before = path.read_bytes()

    other = randomize(SpireAdaptor.from_unet(unets["sd1"]), seed=9)
    with pytest.raises(ValueError, match=r"extra_metadata may not override 'spire.fusion'"):
        save_adaptor(other, path, extra_metadata={"spire.fusion": "additive"})
    with pytest.raises(ValueError, match=r"may not override 'format'"):
        save_adaptor(other, path, extra_metadata={"format": "np"})
    with pytest.raises(TypeError, match=r"extra_metadata must map str to str; got 'step': int"):
        save_adaptor(other, path, extra_metadata={"step": 5})
    assert path.read_bytes() == before and leftovers(tmp_path, {"a.safetensors"}) == []

    # a failure while writing (disk full...) leaves the old file and no temporary file behind
    from spire_core.models import checkpoint

    written = []

    def failing_save_file(tensors, filename, metadata=None):
        written.append(filename)
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", failing_save_file)
    with pytest.raises(OSError, match="No space left"):
        save_adaptor(other, path)
    assert len(written) == 1 and Path(written[0]).parent == tmp_path and written[0] != str(path)
    assert path.read_bytes() == before and leftovers(tmp_path, {"a.safetensors"}) == []
    monkeypatch.undo()

    save_adaptor(other, path)  # a successful save replaces the file
    assert path.read_bytes() != before and leftovers(tmp_path, {"a.safetensors"}) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as any new file, not a temporary file's 0600
    assert torch.equal(load_adaptor(path).gamma_mid.weight, other.gamma_mid.weight)


# --- 2. base UNets from a single file or a diffusers folder ----------------------------------------------


def assert_same_unet(loaded: UNet2DConditionModel, original: UNet2DConditionModel) -> None:
    state, expected = loaded.state_dict(), original.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    sample, timestep, semantic, _, _ = inputs(original)
    got, want = base_output(loaded, sample, timestep, semantic), base_output(original, sample, timestep, semantic)
    assert float(want.abs().max()) > 0.1
    assert float((got - want).abs().max()) <= 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_load_base_unet_from_single_file(unets, checkpoints, family):
    unet, info = load_base_unet(checkpoints[family])
    assert_same_unet(unet, unets[family])
    assert not unet.training
    assert (info.source, info.base_family, info.path) == ("single_file", "custom", checkpoints[family])
    assert (info.prediction_type, info.prediction_type_source) == ("epsilon", "default")
    config = info.unet_config
    sd2 = family == "sd2"
    assert config["block_out_channels"] == ([64, 128] if sd2 else [32, 64])
    assert config["attention_head_dim"] == ([1, 2] if sd2 else 8)
    assert config["use_linear_projection"] is sd2 and config["cross_attention_dim"] == 32
    assert config["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert not any(key.startswith("_") for key in config)
    json.dumps(config)  # plain JSON


@pytest.mark.parametrize("family", FAMILIES)
def test_load_base_unet_from_diffusers_folder(unets, tmp_path, family):
    folder = write_diffusers_folder(tmp_path / "pipe", unets[family], "v_prediction")
    unet, info = load_base_unet(folder)
    assert_same_unet(unet, unets[family])
    assert (info.source, info.prediction_type, info.prediction_type_source) == (
        "diffusers",
        "v_prediction",
        "scheduler config",
    )
    # the unet folder itself (no scheduler next to it), and an fp16 variant only
    bare, info = load_base_unet(folder / "unet")
    assert_same_unet(bare, unets[family])
    assert (info.prediction_type, info.prediction_type_source) == ("epsilon", "default")
    unets[family].save_pretrained(tmp_path / "fp16", safe_serialization=True, variant="fp16")
    assert [p.name for p in (tmp_path / "fp16").glob("*.safetensors")] == ["diffusion_pytorch_model.fp16.safetensors"]
    assert_same_unet(load_base_unet(tmp_path / "fp16")[0], unets[family])


def test_load_base_unet_dtype(checkpoints):
    unet, _ = load_base_unet(checkpoints["sd1"], dtype=torch.float16)
    assert {p.dtype for p in unet.parameters()} == {torch.float16}


@pytest.mark.parametrize(
    "metadata, v_pred, argument, expected, source",
    [
        (None, False, None, "epsilon", "default"),
        ({"modelspec.prediction_type": "v"}, False, None, "v_prediction", "metadata"),
        ({"prediction_type": "v-prediction"}, False, None, "v_prediction", "metadata"),
        ({"modelspec.prediction_type": "epsilon"}, True, None, "epsilon", "metadata"),  # metadata beats the key
        (None, True, None, "v_prediction", "v_pred key"),
        ({"modelspec.prediction_type": "v"}, True, "eps", "epsilon", "argument"),
        (None, False, "V", "v_prediction", "argument"),
    ],
)
def test_prediction_type_of_single_files(unets, tmp_path, metadata, v_pred, argument, expected, source):
    path = write_checkpoint(tmp_path / "m.safetensors", unets["sd1"], metadata=metadata, v_pred=v_pred)
    _, info = load_base_unet(path, prediction_type=argument)
    assert (info.prediction_type, info.prediction_type_source) == (expected, source)


def test_prediction_type_of_folders_and_bad_values(unets, checkpoints, tmp_path):
    folder = write_diffusers_folder(tmp_path / "eps", unets["sd1"], "epsilon")
    assert load_base_unet(folder)[1].prediction_type_source == "scheduler config"
    _, info = load_base_unet(folder, prediction_type="v_prediction")
    assert (info.prediction_type, info.prediction_type_source) == ("v_prediction", "argument")
    no_scheduler = write_diffusers_folder(tmp_path / "none", unets["sd1"], None)
    assert load_base_unet(no_scheduler)[1].prediction_type_source == "default"

    with pytest.raises(BaseModelFileError, match=r"prediction_type argument: unknown prediction type 'sample'"):
        load_base_unet(checkpoints["sd1"], prediction_type="sample")
    odd = write_checkpoint(tmp_path / "odd.safetensors", unets["sd1"], metadata={"prediction_type": "x0"})
    with pytest.raises(BaseModelFileError, match=re.escape(f"{odd}: unknown prediction type 'x0'")):
        load_base_unet(odd)
    folder = write_diffusers_folder(tmp_path / "bad", unets["sd1"], "sample")
    with pytest.raises(BaseModelFileError, match=r"unknown prediction type 'sample'; expected one of"):
        load_base_unet(folder)


# --- 3. clear errors for the wrong files ------------------------------------------------------------------


WHERE = ("models/spire", "models/checkpoints", "models/controlnet")


def assert_says_where_files_go(message: str) -> None:
    assert all(f"ComfyUI/{where}" in message for where in WHERE), message


def adaptor_error(path: Path) -> str:
    with pytest.raises(AdaptorFileError) as caught:
        load_adaptor(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_base_checkpoint_given_as_adaptor(checkpoints):
    message = adaptor_error(checkpoints["sd1"])
    assert (
        "is a base Stable Diffusion checkpoint (contains UNet, VAE, text encoder weights in the original layout), "
        "not a SPIRE adaptor" in message
    )
    assert "Load it with the checkpoint loader" in message and "init --base <checkpoint>" in message
    assert_says_where_files_go(message)
    assert "  " not in message


def test_plain_controlnets_given_as_adaptor(unets, tmp_path):
    controlnet = ControlNetModel.from_unet(unets["sd1"])
    diffusers_layout = tmp_path / "controlnet_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(diffusers_layout))
    message = adaptor_error(diffusers_layout)
    assert "is a plain ControlNet (diffusers layout, no SPIRE metadata), not a SPIRE adaptor" in message
    assert_says_where_files_go(message)

    original_layout = tmp_path / "control_sd15_canny.safetensors"
    g = torch.Generator().manual_seed(0)
    shapes = {
        "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
        "control_model.input_blocks.0.0.weight": (32, 4, 3, 3),
        "control_model.zero_convs.0.0.weight": (32, 32, 1, 1),
        "control_model.zero_convs.0.0.bias": (32,),
        "control_model.middle_block_out.0.weight": (64, 64, 1, 1),
    }
    save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()}, str(original_layout))
    message = adaptor_error(original_layout)
    assert "is a plain ControlNet (original ControlNet layout: control_model/zero_convs/input_hint_block)" in message
    assert_says_where_files_go(message)
    # neither is a base model either
    for path in (diffusers_layout, original_layout):
        with pytest.raises(BaseModelFileError, match=r"is a plain ControlNet .*, not a base Stable Diffusion"):
            load_base_unet(path)


def test_truncated_adaptor(adaptor_file, tmp_path):
    data = adaptor_file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert 1000 < length < len(data) - 8

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-1000])
    message = adaptor_error(cut)
    assert (
        f"is a truncated safetensors file: its header describes {len(data)} bytes but the file has only "
        f"{len(data) - 1000}" in message
    )
    assert "Download or copy it again" in message

    cut.write_bytes(data[: 8 + length // 2])
    message = adaptor_error(cut)
    assert (
        f"is a truncated safetensors file: its header alone should be {length} bytes but the file is only "
        f"{8 + length // 2} bytes" in message
    )

    cut.write_bytes(data[:5])
    assert "is 5 bytes long: too short to be a safetensors file" in adaptor_error(cut)

    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(data + b"\0\0\0")
    assert "is a corrupt safetensors file: 3 unexpected bytes after the tensor data" in adaptor_error(longer)


class _Canary:
    """Unpickling this would create the folder ``path``: proof that a file was (wrongly) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_pickles_and_zips_are_recognised_without_unpickling(tmp_path, monkeypatch):
    canary = tmp_path / "unpickled"

    def forbidden(*args, **kwargs):
        raise AssertionError("a file was unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)

    state = {"state_dict": {"model.diffusion_model.out.2.bias": [0.0] * 64}, "payload": _Canary(canary)}
    legacy = tmp_path / "model.ckpt"
    legacy.write_bytes(pickle.dumps(state))
    assert legacy.read_bytes()[:1] == b"\x80"
    zipped = tmp_path / "model.pt"  # what torch.save writes: a zip with data.pkl inside
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(state))
        archive.writestr("archive/version", "3\n")

    for path in (legacy, zipped):
        for error, load in ((AdaptorFileError, load_adaptor), (BaseModelFileError, load_base_unet)):
            with pytest.raises(error) as caught:
                load(path)
            message = str(caught.value)
            assert str(path) in message and "never unpickles" in message and ".safetensors" in message
            if path == legacy:
                assert "is a Python pickle (e.g. an old .ckpt/.pt/.bin)" in message
            else:
                assert "is a zip archive: most likely a PyTorch pickle checkpoint" in message
            assert_says_where_files_go(message)
    assert not canary.exists()


def test_random_bytes_and_other_safetensors(tmp_path):
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    message = adaptor_error(noise)
    assert "is not a safetensors file (it does not start with a safetensors header)" in message
    assert_says_where_files_go(message)

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.lora_up.weight": torch.zeros(4, 4)}, str(lora))
    assert "is a LoRA, not a SPIRE adaptor" in adaptor_error(lora)
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2), "b": torch.zeros(3)}, str(other))
    assert "is an unrecognised safetensors file (2 tensors, no SPIRE metadata), not a SPIRE adaptor" in adaptor_error(
        other
    )
    assert "no such file" in adaptor_error(tmp_path / "missing.safetensors")


def raw_safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_malformed_headers(tmp_path):
    cases = {
        b'{"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}}': "cannot be parsed (bad entry for 'a')",
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}': "cannot be parsed (bad entry for 'a')",
        b'{"a": {"dtype": "F32", "shape": [1]}}': "its header cannot be parsed ('data_offsets')",
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]': "its header cannot be parsed (",
    }
    for i, (header, expected) in enumerate(cases.items()):
        path = raw_safetensors(tmp_path / f"{i}.safetensors", header, b"\0" * 4)
        message = adaptor_error(path)
        assert "is not a valid safetensors file" in message and expected in message, message
    # data offsets must tile the data exactly (safetensors itself refuses holes and overlaps when loading)
    entries = {
        b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        b'"b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}': "'b' starts at byte 8 of the data, expected 4",
        b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}': "'b' starts at byte 4 of the data, expected 8",
        b'"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 12]}': (
            "'a' has 12 bytes of data but dtype F16 and shape [2, 2] need 8"
        ),
    }
    for i, (body, expected) in enumerate(entries.items()):
        path = raw_safetensors(tmp_path / f"offsets{i}.safetensors", b"{" + body + b"}", b"\0" * 12)
        message = adaptor_error(path)
        assert f"is not a valid safetensors file: its header cannot be parsed ({expected})" in message, message
        with pytest.raises(BaseModelFileError, match=re.escape(expected)):
            load_base_unet(path)
    bad_metadata = b'{"__metadata__": {"spire.fusion": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = raw_safetensors(tmp_path / "meta.safetensors", bad_metadata, b"\0" * 4)
    assert "__metadata__ must map strings to strings" in adaptor_error(path)
    # the header's own length field past the 100 MB safetensors limit
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    assert "is not a safetensors file" in adaptor_error(huge)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda t: {**t, "spire_gamma_down.0.weight": torch.zeros(32, 32, 3, 3)},
            "has 1 tensors whose shape does not match its SPIRE metadata: spire_gamma_down.0.weight: file "
            "(32, 32, 3, 3), expected (32, 32, 1, 1)",
        ),
        (
            lambda t: {**t, "conv_in.weight": torch.zeros(64, 4, 3, 3), "conv_in.bias": torch.zeros(64)},
            "has 2 tensors whose shape does not match its SPIRE metadata: conv_in.weight: file (64, 4, 3, 3), expected "
            "(32, 4, 3, 3), conv_in.bias: file (64,), expected (32,)",
        ),
        (
            lambda t: {k: v for k, v in t.items() if not k.startswith("spire_beta_mid.")},
            "does not match its own SPIRE metadata (fusion=modulation, base_family=sd1): missing 2 keys "
            "(spire_beta_mid.bias, spire_beta_mid.weight)",
        ),
        (
            lambda t: {**t, "controlnet_mid_block.weight": torch.zeros(64, 64, 1, 1)},
            "does not match its own SPIRE metadata (fusion=modulation, base_family=sd1): 1 unexpected keys "
            "(controlnet_mid_block.weight)",
        ),
        (
            lambda t: {**t, "spire_gamma_mid.bias": torch.zeros(64, dtype=torch.int32)},
            "has non-floating-point weights: spire_gamma_mid.bias",
        ),
    ],
    ids=["one_shape", "two_shapes", "missing", "unexpected", "integer"],
)
def test_adaptor_whose_tensors_do_not_match_its_metadata(adaptor_file, tmp_path, change, expected):
    path = rewrite(adaptor_file, tmp_path / "changed.safetensors", change)
    assert file_metadata(path) == file_metadata(adaptor_file)
    message = adaptor_error(path)
    assert expected in message, message


def test_adaptor_whose_header_was_damaged(adaptor_file, tmp_path):
    """A header edited in place (same length, so the file size still matches): a tensor's dtype no longer
    fits its bytes. Refused with the file error before safetensors itself reads anything."""
    data = adaptor_file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = "spire_gamma_mid.weight"
    begin, stop = header[name]["data_offsets"]
    entry = json.dumps(header[name], separators=(",", ":")).encode()
    assert data.count(entry) == 1 and b'"dtype":"F32"' in entry
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(data.replace(entry, entry.replace(b'"F32"', b'"F16"')))
    assert damaged.stat().st_size == len(data)
    message = adaptor_error(damaged)
    assert (
        f"is not a valid safetensors file: its header cannot be parsed ('{name}' has {stop - begin} bytes of data "
        f"but dtype F16 and shape [64, 64, 1, 1] need {64 * 64 * 2})" in message
    )
    assert stop - begin == 64 * 64 * 4


def test_adaptor_with_wrong_or_missing_metadata(adaptor_file, tmp_path):
    metadata = file_metadata(adaptor_file)
    same = lambda t: t  # noqa: E731

    future = rewrite(adaptor_file, tmp_path / "v4.safetensors", same, {**metadata, "spire.format_version": "4"})
    message = adaptor_error(future)
    assert (
        "has invalid SPIRE metadata: adaptor format version 4 is not supported: this version of SPIRE reads formats "
        "1, 2, 3. Update the SPIRE pack to load newer adaptors." in message
    )
    # format 3 is the narrow trunks': a full-width file that claims it is refused, saying why
    narrow_claim = rewrite(adaptor_file, tmp_path / "v3.safetensors", same, {**metadata, "spire.format_version": "3"})
    assert "format 3 is the format of narrower trunks and of SDXL adaptors" in adaptor_error(narrow_claim)
    # a format-1 file never has a numeric channel, and a channel needs the features this version computes
    old = rewrite(adaptor_file, tmp_path / "v1.safetensors", same, {**metadata, "spire.format_version": "1"})
    assert "format 1 has no numeric channel" in adaptor_error(old)
    newer = {**metadata, "spire.numeric_features_version": "2"}
    message = adaptor_error(rewrite(adaptor_file, tmp_path / "features.safetensors", same, newer))
    assert "reads features version 2; this version of SPIRE computes version 1" in message

    broken = {**metadata, "spire.controlnet_config": "{not json"}
    message = adaptor_error(rewrite(adaptor_file, tmp_path / "json.safetensors", same, broken))
    assert "has invalid SPIRE metadata: metadata spire.controlnet_config is not valid JSON" in message
    wrong_fusion = {**metadata, "spire.fusion": "sum"}
    message = adaptor_error(rewrite(adaptor_file, tmp_path / "fusion.safetensors", same, wrong_fusion))
    assert "has invalid SPIRE metadata: AdaptorConfig.fusion must be one of modulation, additive; got 'sum'" in message
    lacking = {k: v for k, v in metadata.items() if k != "spire.base_family"}
    message = adaptor_error(rewrite(adaptor_file, tmp_path / "lacking.safetensors", same, lacking))
    assert "has invalid SPIRE metadata: metadata lacks spire.base_family" in message

    bare = rewrite(adaptor_file, tmp_path / "bare.safetensors", same, {})
    assert file_metadata(bare) == {}
    message = adaptor_error(bare)
    assert "is a SPIRE adaptor whose spire.* metadata was lost (re-saved by another tool?), not a SPIRE adaptor" in (
        message
    )
    assert_says_where_files_go(message)


def test_base_loader_refuses_adaptors_and_odd_folders(adaptor_file, unets, tmp_path):
    with pytest.raises(BaseModelFileError) as caught:
        load_base_unet(adaptor_file)
    message = str(caught.value)
    assert f"{adaptor_file} is a SPIRE adaptor, not a base Stable Diffusion checkpoint with UNet weights" in message
    assert "Load it with the SPIRE adaptor loader" in message and "  " not in message
    assert_says_where_files_go(message)

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(BaseModelFileError) as caught:
        load_base_unet(empty)
    message = str(caught.value)
    assert f"{empty} is a folder but not a diffusers model: expected unet/config.json" in message
    assert_says_where_files_go(message)

    pickled = tmp_path / "pickled_unet"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "unet" / "config.json").write_text(json.dumps(dict(unets["sd1"].config)))
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04never read")
    with pytest.raises(BaseModelFileError, match=r"has no diffusion_pytorch_model.safetensors: .*never pickled"):
        load_base_unet(pickled)

    unets["sd1"].save_pretrained(tmp_path / "unet_folder", safe_serialization=True)
    weights = tmp_path / "unet_folder" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(BaseModelFileError, match=r"is a diffusers UNet weights file .*Give the diffusers model folder"):
        load_base_unet(weights)
    with pytest.raises(AdaptorFileError, match=r"is a diffusers UNet weights file"):
        load_adaptor(weights)

    vae_only = tmp_path / "vae.safetensors"
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(vae_only))
    with pytest.raises(BaseModelFileError, match=r"\(contains VAE weights .*\), not a base .* with UNet weights"):
        load_base_unet(vae_only)
    with pytest.raises(BaseModelFileError, match=r"no such file"):
        load_base_unet(tmp_path / "missing.safetensors")


def test_check_fits_unet_names_every_mismatch(unets):
    config = SpireAdaptor.from_unet(unets["sd1"], base_family="sd1").config
    check_fits_unet(config, unets["sd1"].config)  # fits the UNet it was made from (FrozenDict)...
    check_fits_unet(config, tiny_unet_config("sd1"))  # ...and the same config as a plain dict
    with pytest.raises(AdaptorFileError) as caught:
        check_fits_unet(config, unets["sd2"].config)
    message = str(caught.value)
    assert "this SPIRE adaptor (base family 'sd1') does not fit the base model's UNet" in message
    assert "block_out_channels: adaptor [32, 64], base [64, 128]" in message
    assert "attention heads: adaptor [8, 8], base [1, 2]" in message
    assert "use_linear_projection: adaptor False, base True" in message
    assert message.count(": adaptor ") == 3  # cross-attention dim, layers, block types... all agree
    with pytest.raises(AdaptorFileError, match=r"cross_attention_dim: adaptor 32, base 768"):
        check_fits_unet(config, tiny_unet_config("sd1", cross_attention_dim=768))
    with pytest.raises(AdaptorFileError, match=r"layers_per_block: adaptor 1, base 2"):
        check_fits_unet(config, {**tiny_unet_config("sd1"), "layers_per_block": 2})


# --- 4. the CLI -------------------------------------------------------------------------------------------


def printed_counts(text: str) -> dict[str, int]:
    match = re.search(r"parameters: trunk ([\d,]+), heads ([\d,]+), numeric ([\d,]+), total ([\d,]+)", text)
    assert match, text
    trunk, heads, numeric, total = (int(group.replace(",", "")) for group in match.groups())
    return {"trunk": trunk, "heads": heads, "numeric": numeric, "total": total}


def adaptor_counts(adaptor: SpireAdaptor) -> dict[str, int]:
    trunk = sum(p.numel() for p in adaptor.trunk_parameters())
    heads = sum(p.numel() for p in adaptor.head_parameters())
    numeric = sum(p.numel() for p in adaptor.numeric_parameters())
    return {"trunk": trunk, "heads": heads, "numeric": numeric, "total": trunk + heads + numeric}


def assert_exact_identity(unet: UNet2DConditionModel, adaptor: SpireAdaptor) -> None:
    sample, timestep, semantic, restoration, hint = inputs(unet)
    with torch.no_grad():
        got = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint, strength=1.0)
    assert torch.equal(got, base_output(unet, sample, timestep, semantic))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cli_init_writes_an_identity_adaptor(unets, tmp_path, capsys, fusion):
    base = write_checkpoint(tmp_path / "base.safetensors", unets["sd1"], metadata={"modelspec.prediction_type": "v"})
    out = tmp_path / "models" / "spire" / "fresh.safetensors"
    assert cli_main(["init", "--base", str(base), "--out", str(out), "--fusion", fusion]) == 0
    printed = capsys.readouterr().out
    adaptor = load_adaptor(out)
    assert adaptor.fusion == fusion and adaptor.config.base_family == "custom"
    assert adaptor.config.prediction_type == "v_prediction" and adaptor.config.text_encoder_layer == "last"
    assert file_metadata(out)["spire.init_base"] == "base.safetensors"
    assert_exact_identity(unets["sd1"], adaptor)
    assert torch.equal(adaptor.controlnet.conv_in.weight, unets["sd1"].conv_in.weight)  # trunk copies the base
    assert f"wrote {out}: fresh SPIRE adaptor ({fusion} fusion, base family custom, v_prediction" in printed
    assert "4 skips + middle block" in printed and "prediction type from metadata" in printed
    assert printed_counts(printed) == adaptor_counts(adaptor)
    assert adaptor_counts(adaptor)["heads"] == (0 if fusion == "additive" else 2 * (3 * 1056 + 4160) + 2 * 4160)
    assert adaptor_counts(adaptor)["numeric"] == (43 * 32 + 32) + (32 * 128 + 128)  # the numeric channel
    assert "numeric channel: 4 tokens" in printed

    # never overwrites without --overwrite
    before = out.read_bytes()
    assert cli_main(["init", "--base", str(base), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"error: {out} already exists; pass --overwrite to replace it" in error
    assert out.read_bytes() == before
    args = ["init", "--base", str(base), "--out", str(out), "--overwrite", "--base-family", "sd2"]
    assert cli_main([*args, "--prediction-type", "epsilon"]) == 0
    capsys.readouterr()
    replaced = load_adaptor(out)
    assert (replaced.fusion, replaced.config.base_family, replaced.config.text_encoder_layer) == (
        "modulation",
        "sd2",
        "penultimate",
    )
    assert replaced.config.prediction_type == "epsilon"
    assert leftovers(out.parent, {"fresh.safetensors"}) == []


def test_cli_init_errors(checkpoints, adaptor_file, tmp_path, capsys):
    assert cli_main(["init", "--base", str(checkpoints["sd1"]), "--out", str(tmp_path / "a.pt")]) == 2
    assert "error: --out must end in .safetensors (the only adaptor format); got a.pt" in capsys.readouterr().err
    assert cli_main(["init", "--base", str(adaptor_file), "--out", str(tmp_path / "a.safetensors")]) == 2
    error = capsys.readouterr().err
    assert f"error: {adaptor_file} is a SPIRE adaptor, not a base Stable Diffusion checkpoint" in error
    assert not (tmp_path / "a.safetensors").exists()
    with pytest.raises(SystemExit) as caught:
        cli_main(["init", "--base", str(checkpoints["sd1"])])  # argparse: --out is required
    assert caught.value.code == 2 and "--out" in capsys.readouterr().err


def test_cli_init_as_a_subprocess(unets, checkpoints, tmp_path):
    out = tmp_path / "sub.safetensors"
    command = [sys.executable, "-m", "spire_core.models", "init", "--base", str(checkpoints["sd2"]), "--out", str(out)]
    result = subprocess.run(
        [*command, "--fusion", "additive"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    adaptor = load_adaptor(out)
    assert adaptor.fusion == "additive" and adaptor.config.controlnet_config["block_out_channels"] == [64, 128]
    assert_exact_identity(unets["sd2"], adaptor)
    assert printed_counts(result.stdout) == adaptor_counts(adaptor)
    assert f"base: {checkpoints['sd2']} (single_file; prediction type from default)" in result.stdout


def test_cli_inspect_adaptor(adaptor_file, capsys):
    assert cli_main(["inspect", str(adaptor_file)]) == 0
    printed = capsys.readouterr().out
    adaptor = load_adaptor(adaptor_file)
    state = adaptor.file_state_dict()
    size = adaptor_file.stat().st_size
    assert f"{adaptor_file}: SPIRE adaptor, {len(state)} tensors, {size:,} bytes" in printed
    for key, value in file_metadata(adaptor_file).items():
        if key != "spire.controlnet_config":
            assert f"  {key}: {value}\n" in printed
    config_line = re.search(r"  spire.controlnet_config: (.*)\n", printed).group(1)
    assert json.loads(config_line) == adaptor.config.controlnet_config
    assert "skips modulated: 4 + middle block (modulation)" in printed
    counts = printed_counts(printed)
    assert counts == adaptor_counts(adaptor)
    assert counts["total"] == numel(state) and counts["heads"] == 2 * (3 * 1056 + 4160) + 2 * 4160


def test_cli_inspect_other_files(checkpoints, unets, tmp_path, capsys):
    assert cli_main(["inspect", str(checkpoints["sd1"])]) == 1
    printed = capsys.readouterr().out
    assert f"{checkpoints['sd1']} is a base Stable Diffusion checkpoint (contains UNet, VAE, text encoder" in printed
    unet_count = sum(p.numel() for p in unets["sd1"].parameters())
    fake = sum(math.prod(shape) for shape in FAKE_VAE_AND_TEXT_ENCODER.values())
    tensors = len(unets["sd1"].state_dict()) + len(FAKE_VAE_AND_TEXT_ENCODER)
    assert f"tensors: {tensors}, parameters: {unet_count + fake:,}" in printed
    assert f"UNet parameters: {unet_count:,}" in printed
    assert "python -m spire_core.models init --base FILE" in printed
    assert_says_where_files_go(printed)

    missing = tmp_path / "missing.safetensors"
    assert cli_main(["inspect", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"error: {missing}: no such file. SPIRE adaptors go in ComfyUI/models/spire" in (
        captured.err
    )
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(pickle.dumps({"state_dict": {}}))
    assert cli_main(["inspect", str(pickled)]) == 2
    assert "is a Python pickle" in capsys.readouterr().err


def test_cli_inspect_invalid_adaptor(adaptor_file, tmp_path, capsys):
    metadata = {**file_metadata(adaptor_file), "spire.format_version": "4"}
    future = rewrite(adaptor_file, tmp_path / "v4.safetensors", lambda t: t, metadata)
    assert cli_main(["inspect", str(future)]) == 2
    assert "adaptor format version 4 is not supported" in capsys.readouterr().err


# --- 5. ComfyUI cldm layout -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_to_cldm_state_dict(unets, tmp_path, family, fusion):
    unet = unets[family]
    path = save_adaptor(SpireAdaptor.from_unet(unet, fusion=fusion), tmp_path / "a.safetensors")
    config, state = read_adaptor_file(path)
    out = to_cldm_state_dict(state, config)
    assert len(out) == len(state) and numel(out) == numel(state)
    assert sorted(id(t) for t in out.values()) == sorted(id(t) for t in state.values())  # renamed, not copied

    hint = {k: v for k, v in out.items() if k.startswith("input_hint_block.")}
    assert sorted({int(k.split(".")[1]) for k in hint}) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert len(hint) == 16
    embedding = "controlnet_cond_embedding."
    assert out["input_hint_block.0.weight"] is state[embedding + "conv_in.weight"]
    for i in range(6):
        assert out[f"input_hint_block.{2 * i + 2}.bias"] is state[f"{embedding}blocks.{i}.bias"]
    assert out["input_hint_block.14.weight"] is state[embedding + "conv_out.weight"]
    assert tuple(out["input_hint_block.14.weight"].shape) == (unet.config.block_out_channels[0], 256, 3, 3)

    zero = sorted(k for k in out if k.startswith(("zero_convs.", "middle_block_out.")))
    heads = sorted(k for k in out if k.startswith("spire_"))
    if fusion == "additive":
        assert zero == sorted(
            [f"zero_convs.{n}.0.{p}" for n in range(4) for p in ("weight", "bias")]
            + ["middle_block_out.0.bias", "middle_block_out.0.weight"]
        )
        assert out["zero_convs.3.0.weight"] is state["controlnet_down_blocks.3.weight"]
        assert out["middle_block_out.0.bias"] is state["controlnet_mid_block.bias"]
        assert len(heads) == 4  # the numeric channel only
    else:
        assert zero == [] and len(heads) == 20 + 4  # the modulation heads and the numeric channel
    assert all(out[k] is state[k] for k in heads) and all(k.startswith("spire_numeric.") for k in heads[-4:])

    # the trunk gets exactly the original-layout names of the base UNet's encoder and middle block
    trunk = {
        k: v for k, v in out.items() if not k.startswith(("input_hint_block.", "zero_convs.", "middle_block_out."))
    }
    trunk = {k: v for k, v in trunk.items() if not k.startswith("spire_")}
    base = diffusers_to_ldm_unet(unet.state_dict(), unet.config)
    encoder = {k: v for k, v in base.items() if k.startswith(("time_embed.", "input_blocks.", "middle_block."))}
    assert sorted(trunk) == sorted(encoder)
    assert all(torch.equal(trunk[k], encoder[k]) for k in encoder)


def test_cldm_kwargs_for_the_tiny_families(unets):
    sd1 = cldm_kwargs(SpireAdaptor.from_unet(unets["sd1"]).config)
    assert (sd1["num_heads"], sd1["num_head_channels"]) == (8, -1)
    assert (sd1["model_channels"], sd1["channel_mult"], sd1["num_res_blocks"]) == (32, [1, 2], [1, 1])
    assert (sd1["transformer_depth"], sd1["transformer_depth_middle"]) == ([1, 0], 1)
    assert (sd1["context_dim"], sd1["use_linear_in_transformer"], sd1["hint_channels"]) == (32, False, 3)
    assert (sd1["in_channels"], sd1["upcast_attention"], sd1["disable_self_attentions"]) == (4, False, None)
    assert level_heads(sd1) == [8, 8]

    sd2 = cldm_kwargs(SpireAdaptor.from_unet(unets["sd2"]).config)
    assert (sd2["num_heads"], sd2["num_head_channels"]) == (-1, 64)
    assert (sd2["model_channels"], sd2["channel_mult"], sd2["use_linear_in_transformer"]) == (64, [1, 2], True)
    assert level_heads(sd2) == [1, 2]
    json.dumps(sd2)


def test_cldm_kwargs_refuses_unsupported_trunks(unets):
    config = SpireAdaptor.from_unet(unets["sd1"]).config

    def modified(**changes) -> AdaptorConfig:
        return AdaptorConfig(controlnet_config={**config.controlnet_config, **changes})

    with pytest.raises(
        ComfyLayoutError, match=r"cannot be built as a ComfyUI ControlNet: norm_num_groups=16 \(needs 32\)"
    ):
        cldm_kwargs(modified(norm_num_groups=16))
    with pytest.raises(ComfyLayoutError) as caught:
        cldm_kwargs(modified(act_fn="gelu", mid_block_type="UNetMidBlock2D", block_out_channels=[32, 48]))
    message = str(caught.value)
    assert "act_fn='gelu' (needs 'silu')" in message
    assert "mid_block_type='UNetMidBlock2D' (needs 'UNetMidBlock2DCrossAttn')" in message
    assert "block_out_channels=[32, 48] (each must be a multiple of the first)" in message
    with pytest.raises(ComfyLayoutError, match=r"conditioning_embedding_out_channels=\[16, 32\]"):
        cldm_kwargs(modified(conditioning_embedding_out_channels=[16, 32]))
    with pytest.raises(ComfyLayoutError, match=r"attention heads \[2, 8\] for channels \[32, 64\]"):
        cldm_kwargs(modified(attention_head_dim=[2, 8]))


# --- diverged and untrained adaptors ---------------------------------------------------------------------


def test_a_diverged_adaptor_is_refused_at_load_and_never_written(unets, adaptor_file, tmp_path, capsys):
    state = load_file(str(adaptor_file))
    state["spire_gamma_down.1.weight"] = state["spire_gamma_down.1.weight"].clone()
    state["spire_gamma_down.1.weight"][0, 0, 0, 0] = float("nan")
    state["spire_beta_mid.bias"] = torch.full_like(state["spire_beta_mid.bias"], float("inf"))
    diverged = tmp_path / "diverged.safetensors"
    save_file(state, str(diverged), metadata=file_metadata(adaptor_file))
    for load in (load_adaptor, read_adaptor_file):
        with pytest.raises(AdaptorFileError) as caught:
            load(diverged)
        message = str(caught.value)
        assert f"{diverged} holds 65 NaN or Inf values in 2 of its" in message
        assert "spire_beta_mid.bias, spire_gamma_down.1.weight" in message and "diverged" in message
    assert cli_main(["inspect", str(diverged)]) == 2
    assert "NaN or Inf values" in capsys.readouterr().err
    adaptor = SpireAdaptor.from_unet(unets["sd1"])
    with torch.no_grad():
        adaptor.gamma_mid.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(AdaptorFileError, match="not writing the adaptor: .* would hold 1 NaN or Inf values"):
        save_adaptor(adaptor, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists() and leftovers(tmp_path, {"diverged.safetensors"}) == []


@pytest.mark.parametrize("fusion", FUSIONS)
def test_an_untrained_adaptor_says_so(unets, tmp_path, capsys, fusion):
    fresh = save_adaptor(SpireAdaptor.from_unet(unets["sd1"], fusion=fusion), tmp_path / "fresh.safetensors")
    config, state = read_adaptor_file(fresh)
    reason = untrained_reason(config, state, file_metadata(fresh))
    assert reason.startswith("untrained: its ") and "are all zero (no training step in its metadata)" in reason
    assert "ignores the photo" in reason and "docs/training.md" in reason
    assert cli_main(["inspect", str(fresh)]) == 0
    assert "status: UNTRAINED, untrained: its" in capsys.readouterr().out
    trained = randomize(SpireAdaptor.from_unet(unets["sd1"], fusion=fusion), seed=5)
    path = save_adaptor(trained, tmp_path / "trained.safetensors", extra_metadata={TRAINING_STEP_KEY: "1200"})
    config, state = read_adaptor_file(path)
    assert untrained_reason(config, state, file_metadata(path)) == ""
    assert cli_main(["inspect", str(path)]) == 0
    assert "status: trained (step 1200)" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["tiny-sd1", "tiny-sd2", "sd1", "sd2"])
def test_the_file_layout_written_out_is_the_one_diffusers_builds(family):
    """Header validation knows an adaptor's keys and shapes without diffusers (file_layout); pinned here, key for
    key and shape for shape, to the model diffusers builds for real-size and tiny SD1.x/SD2.x trunks."""
    from diffusers import UNet2DConditionModel

    from spire_core.models import AdaptorConfig, SpireAdaptor, tiny_unet_config
    from spire_core.models.config import controlnet_config_from_unet
    from spire_core.models.file_layout import adaptor_file_shapes

    sd1 = {
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }
    sd2 = {**sd1, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True}
    unet_config = {"tiny-sd1": tiny_unet_config("sd1"), "tiny-sd2": tiny_unet_config("sd2"), "sd1": sd1, "sd2": sd2}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config[family])
    for fusion in ("modulation", "additive"):
        for numeric_tokens in (0, 4):
            config = AdaptorConfig(
                controlnet_config=controlnet_config_from_unet(dict(unet.config)),
                fusion=fusion,
                numeric_tokens=numeric_tokens,
            )
            with torch.device("meta"):
                built = {key: tuple(value.shape) for key, value in SpireAdaptor(config).file_state_dict().items()}
            assert adaptor_file_shapes(config) == built, (family, fusion, numeric_tokens)
            assert len(built) > 100
