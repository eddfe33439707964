"""spire_core.training: config, data (captions, bad files), synthesis, the loop (loss goes down), atomic checkpoints,
exact resume, export to the adaptor format, and the command line; tiny random models on the CPU."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from spire_core.degradation import PRESETS, degrade, effective_request, gradable, graded_params
from spire_core.models import load_adaptor, predict_noise, read_adaptor_file
from spire_core.prompt import BLIND_PROMPT, parse
from spire_core.training import (
    ConfigError,
    CropStream,
    DataError,
    Trainer,
    TrainingConfig,
    config_from_dict,
    controlled_prediction,
    draw_sample,
    export_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_config,
    read_checkpoint,
    read_log,
    scan_folder,
    synthesize,
    write_tiny_base,
)
from spire_core.training import checkpoints as checkpoints_module
from spire_core.training.__main__ import main as cli_main
from spire_core.training.components import build_adaptor
from spire_core.training.config import DataConfig, PromptConfig
from spire_core.training.ema import EMA

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PACK_DIR = Path(__file__).resolve().parents[2]

LOSS_REDUCTION = 2.0
"""30 AdamW steps (lr 2e-3) on one fixed batch must divide its loss by at least this much."""


# ------------------------------------------------------------------------------------------------ fixtures


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons (one mixed-precision mode per process); tests change it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return write_tiny_base(tmp_path_factory.mktemp("tiny-sd"))


def write_photo(path: Path, seed: int, size: tuple[int, int] = (80, 72)) -> Path:
    """A smooth random colour image (low-frequency content, like a photo), PNG or JPEG by suffix."""
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 7, 3)) * 255).astype("uint8")
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def photo_folder(root: Path, count: int = 4, captions: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_photo(root / f"photo{i}.png", i)
        if captions:
            (root / f"photo{i}.txt").write_text(f"a photo of object {i}\n")
    return root


def tiny_config(base: Path, images: Path, out: Path, **sections) -> TrainingConfig:
    """A config for the tiny models: 64 px crops, light degradations, CPU, float32, frequent logs."""
    raw = {
        "model": {"base": str(base)},
        "data": {"folder": str(images), "resolution": 64, "num_workers": 0},
        "degradation": {"preset": "light"},
        "train": {
            "output_dir": str(out),
            "steps": 4,
            "batch_size": 2,
            "gradient_accumulation_steps": 1,
            "mixed_precision": "no",
            "device": "cpu",
        },
        "optim": {"lr": 2e-3},
        "ema": {"decay": 0.9},
        "checkpoint": {"every": 1000},
        "validation": {"every": 0},
        "logging": {"every": 1, "tensorboard": "off"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def fixed_inputs(trainer: Trainer, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    dim = trainer.components.unet.config.cross_attention_dim
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.tensor([5, 700]),
        torch.randn(2, 77, dim, generator=g),
        torch.randn(2, 77, dim, generator=g),
        torch.rand(2, 3, 64, 64, generator=g),
    )


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_are_the_paper_defaults():
    config = TrainingConfig()
    assert config.optim.lr == 1e-5 and config.optim.weight_decay == 0.0  # paper #15
    prompts = config.prompts
    assert (prompts.partial_prob, prompts.graded_prob, prompts.blind_prob, prompts.empty_semantic_prob) == (
        0.3,
        0.3,
        0.3,
        0.3,
    )  # paper #12-#13; paper #11's 0.5 partial share is split between partial and graded samples
    assert config.data.resolution == 512 and config.data.resize == "short_side"  # paper #14
    assert config.degradation.preset == "paper" and config.model.fusion == "modulation"  # paper #5, #7
    assert config.train.batch_size * config.train.gradient_accumulation_steps == 64  # paper #15: 64-256
    assert config.ema.enabled and config.checkpoint.export_weights == "ema"


def test_config_files_toml_and_json_with_overrides(tmp_path):
    (tmp_path / "train.toml").write_text(
        '[model]\nbase = "models/sd15"\n[data]\nfolder = "images"\non_bad = "error"\n[train]\nsteps = 10\n'
    )
    config = load_config(tmp_path / "train.toml", ["train.steps=30", "optim.lr=1e-4", "prompts.blind_prob=0"])
    assert config.train.steps == 30 and config.optim.lr == 1e-4 and config.prompts.blind_prob == 0.0
    assert config.data.on_bad == "error"
    assert Path(config.model.base) == tmp_path / "models" / "sd15"  # relative to the config file
    (tmp_path / "train.json").write_text(json.dumps({"model": {"base": "/abs/sd"}, "data": {"folder": "/abs/img"}}))
    assert load_config(tmp_path / "train.json").model.base == "/abs/sd"

    with pytest.raises(ConfigError, match=r"unknown fields \['stepz'\] in \[train\]"):
        load_config(tmp_path / "train.toml", ["train.stepz=3"])
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        load_config(tmp_path / "train.toml", ["train.steps=ten"])
    with pytest.raises(ConfigError, match="data.on_bad must be one of 'skip', 'error'"):
        load_config(tmp_path / "train.toml", ["data.on_bad=ignore"])
    with pytest.raises(ConfigError, match="model.base is required"):
        load_config(None, ["data.folder=x"])
    with pytest.raises(ConfigError, match="fp16' needs CUDA"):
        load_config(tmp_path / "train.toml", ["train.device=cpu", "train.mixed_precision=fp16"])


# ------------------------------------------------------------------------------------------------ data


def test_caption_sources_coco_txt_none(tmp_path):
    folder = photo_folder(tmp_path / "images", count=3, captions=False)
    coco = {
        "images": [{"id": 1, "file_name": "photo0.png"}, {"id": 2, "file_name": "photo1.png"}],
        "annotations": [
            {"image_id": 1, "caption": "A zebra grazing."},
            {"image_id": 1, "caption": "A striped horse."},
            {"image_id": 2, "caption": "Oranges in a bowl."},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    config = DataConfig(folder=str(folder), captions_file=str(tmp_path / "captions.json"), resolution=64)
    report = scan_folder(config)  # auto -> coco; photo2 has no caption and is left out
    assert report.caption_source == "coco"
    assert {r.path.name: r.captions for r in report.records} == {
        "photo0.png": ("A zebra grazing.", "A striped horse."),
        "photo1.png": ("Oranges in a bowl.",),
    }
    assert report.counts() == {"unreadable": 0, "too_small": 0, "missing_caption": 1, "bad_caption": 0}
    stream = CropStream(report.records, config, seed=0)
    captions = {stream[k]["caption"] for k in range(40)}
    assert captions == {"A zebra grazing.", "A striped horse.", "Oranges in a bowl."}  # one drawn per sample

    (folder / "photo0.txt").write_text("a red car\n\nan old car\n")
    (folder / "photo1.txt").write_text("a blue boat\n")
    (folder / "photo2.txt").write_text("a green tree\n")
    report = scan_folder(DataConfig(folder=str(folder), resolution=64))  # auto -> txt
    assert report.caption_source == "txt"
    assert [r.captions for r in report.records] == [("a red car", "an old car"), ("a blue boat",), ("a green tree",)]

    report = scan_folder(DataConfig(folder=str(folder), captions="none", resolution=64))
    assert report.caption_source == "none" and all(r.captions == () for r in report.records)
    assert {CropStream(report.records, config, 0)[k]["caption"] for k in range(6)} == {""}  # empty semantic prompt


def test_stream_is_reproducible_random_crops_and_epochs(tmp_path):
    folder = photo_folder(tmp_path / "images", count=3)
    config = DataConfig(folder=str(folder), resolution=64, resize="none")
    records = scan_folder(config).records
    a, b = CropStream(records, config, seed=5), CropStream(records, config, seed=5)
    first = [a[k] for k in range(6)]
    assert all(torch.equal(x["image"], b[k]["image"]) for k, x in enumerate(first))
    assert first[0]["image"].shape == (3, 64, 64) and first[0]["image"].dtype == torch.uint8
    # Each epoch of 3 positions visits every image once, in its own seeded order.
    orders = [tuple(a.order(epoch).tolist()) for epoch in range(6)]
    assert all(sorted(o) == [0, 1, 2] for o in orders) and len(set(orders)) > 1
    full = torch.from_numpy(np.array(Image.open(records[0].path).convert("RGB"))).permute(2, 0, 1)
    windows = {(y, x) for y in range(72 - 63) for x in range(80 - 63)}
    found = set()
    for k in range(30):
        item = a[k]
        if a.order(k // 3)[k % 3].item() == 0:
            match = [(y, x) for y, x in windows if torch.equal(full[:, y : y + 64, x : x + 64], item["image"])]
            assert len(match) >= 1  # an exact crop of the file, no resampling with resize="none"
            found.add(match[0])
    assert len(found) > 2  # crops are at random positions


def make_bad_folder(root: Path) -> Path:
    photo_folder(root, count=3)
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "broken.txt").write_text("caption of a broken file\n")
    write_photo(root / "tiny.png", 9, size=(20, 20))
    (root / "tiny.txt").write_text("a small image\n")
    write_photo(root / "uncaptioned.png", 10)
    truncated = write_photo(root / "truncated.png", 11).read_bytes()
    (root / "truncated.png").write_bytes(truncated[: len(truncated) // 2])  # header fine, pixels cut off
    (root / "truncated.txt").write_text("a truncated file\n")
    write_photo(root / "weighted.png", 12)
    (root / "weighted.txt").write_text("a dog on grass\na (dog:nan) on grass\n")  # one caption the reader refuses
    write_photo(root / "verbose.png", 13)
    (root / "verbose.txt").write_text(" ".join(["zebra"] * 80) + "\n")  # 400 tokens: 6 windows, over 4
    return root


def test_bad_data_is_skipped_and_counted_in_the_log(tiny_base, tmp_path):
    folder = make_bad_folder(tmp_path / "images")
    config = tiny_config(tiny_base, folder, tmp_path / "run", train={"steps": 2})
    trainer = Trainer(config)
    history = trainer.train()  # 4 samples over 4 usable images: the truncated one is hit and replaced
    scan = read_log(tmp_path / "run" / "logs" / "train.jsonl", "data_scan")[0]
    assert scan["images"] == 4  # photo0-2 and truncated (its header is readable)
    assert scan["skipped"] == {"unreadable": 1, "too_small": 1, "missing_caption": 1, "bad_caption": 2}
    assert scan["examples"]["unreadable"][0].endswith("broken.jpg")
    assert scan["examples"]["too_small"][0].endswith("tiny.png")
    assert scan["examples"]["missing_caption"][0].endswith("uncaptioned.png")
    assert [Path(p).name for p in scan["examples"]["bad_caption"]] == ["weighted.png", "verbose.png"]
    steps = read_log(tmp_path / "run" / "logs" / "train.jsonl", "step")
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[-1]["skipped_while_loading"]["unreadable"] == 1
    assert all(np.isfinite(h["loss"]) for h in history)


def test_bad_data_error_mode_names_the_file(tiny_base, tmp_path):
    folder = make_bad_folder(tmp_path / "images")
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image.*on_bad='error'"):
        scan_folder(DataConfig(folder=str(folder), resolution=64, on_bad="error"))
    for name in ("broken.jpg", "tiny.png", "uncaptioned.png"):
        (folder / name).unlink()
    with pytest.raises(DataError, match=r"weighted\.png: caption 'a \(dog:nan\) on grass' cannot be encoded.*finite"):
        scan_folder(DataConfig(folder=str(folder), resolution=64, on_bad="error"))
    (folder / "weighted.png").unlink()
    config = tiny_config(tiny_base, folder, tmp_path / "run", data={"on_bad": "error"}, train={"steps": 2})
    with pytest.raises(DataError, match=r"verbose\.png: a caption takes 6 windows of 75 tokens.*at most 4"):
        Trainer(config)  # counted once the base's tokenizer is loaded
    (folder / "verbose.png").unlink()
    trainer = Trainer(config)
    with pytest.raises(DataError, match=r"truncated\.png: cannot decode image"):
        trainer.train()
    with pytest.raises(DataError, match="too small for 64 px crops"):
        write_photo(folder / "tiny.png", 9, size=(20, 20))
        scan_folder(DataConfig(folder=str(folder), resolution=64, on_bad="error"))
    with pytest.raises(DataError, match="no usable training image"):
        scan_folder(DataConfig(folder=str(photo_folder(tmp_path / "empty", 0)), resolution=64))


# ------------------------------------------------------------------------------------------------ synthesis


def test_partial_graded_full_blind_and_semantic_dropout():
    spec = PRESETS["paper"]
    draws = [draw_sample(spec, PromptConfig(0.3, 0.3, 0.3, 0.3), seed=1, position=k) for k in range(400)]
    kinds = {kind: sum(d.kind == kind for d in draws) / len(draws) for kind in ("full", "partial", "graded", "blind")}
    assert 0.2 < kinds["partial"] < 0.4 and 0.2 < kinds["graded"] < 0.4 and 0.05 < kinds["blind"] < 0.2, kinds
    assert 0.2 < sum(d.drop_semantic for d in draws) / len(draws) < 0.4
    fractions = []
    for d in draws:
        present = effective_request(d.params)
        if d.kind == "partial":
            assert 0 < len(d.named) < len(present.named()) and set(d.named) < set(present.named())
            assert parse(d.restoration_prompt).named() == d.named  # the prompt names exactly the subset
        elif d.kind == "graded":
            request = parse(d.restoration_prompt)
            assert request == d.request and request.named() == d.named and set(d.named) <= set(present.named())
            fractions += [request.denoise / present.denoise] if request.denoise else []
        elif d.kind == "full":
            assert parse(d.restoration_prompt).named() == present.named()
        else:
            assert d.restoration_prompt == BLIND_PROMPT
    # level-balanced: the named fraction of the noise level is spread over (0, 1], not clustered near 1
    assert len(fractions) > 40
    assert 0.35 < sum(fractions) / len(fractions) < 0.65 and sum(f < 0.5 for f in fractions) > len(fractions) / 3
    assert draw_sample(spec, PromptConfig(0.3, 0.3, 0.3, 0.3), 1, 7) == draws[7]  # a function of (seed, position)

    clean = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    candidates = [draw_sample(spec, PromptConfig(0.5, 0.5, 0.0, 0.0), 2, k) for k in range(100)]
    partial = next(d for d in candidates if d.kind == "partial")
    graded = next(d for d in candidates if d.kind == "graded" and d.request.denoise and "denoise" in gradable(d.params))
    full = draw_sample(spec, PromptConfig(0.0, 0.0, 0.0, 1.0), 2, 1)
    batch = synthesize(clean, [partial, full, graded], ["a cat", "a dog", "a cow"])
    assert torch.equal(batch.target[1], clean[1]) and batch.semantic_prompts == ["a cat", "", "a cow"]
    for item, draw in ((0, partial), (2, graded)):
        present, residual = graded_params(draw.params, draw.request)
        assert torch.equal(batch.target[item], degrade(clean[item : item + 1], [residual]).images[0])
        assert torch.equal(batch.degraded[item], degrade(clean[item : item + 1], [present]).images[0])
        assert not torch.equal(batch.target[item], clean[item])
    assert torch.equal(batch.degraded[0], degrade(clean[:1], [partial.params]).images[0])  # nothing split


# ------------------------------------------------------------------------------------------------ the loop


def test_thirty_steps_reduce_the_loss_on_a_fixed_batch(tiny_base, tmp_path):
    folder = photo_folder(tmp_path / "images", count=2)
    config = tiny_config(tiny_base, folder, tmp_path / "run", ema={"enabled": False})
    trainer = Trainer(config)
    loaded = trainer.load_positions([0, 1])
    batch = trainer.make_batch(loaded)
    with torch.no_grad():
        before = trainer.compute_loss(batch).item()
    history = [trainer.train_step(itertools.repeat(loaded))["loss"] for _ in range(30)]
    with torch.no_grad():
        after = trainer.compute_loss(batch).item()
    assert history[0] == pytest.approx(before, rel=1e-6)  # the first step saw exactly this batch
    assert before / after >= LOSS_REDUCTION, (before, after, history)
    assert all(b < a for a, b in zip(history[::5], history[5::5]))  # steadily down, not by a lucky draw
    unet_frozen = all(not p.requires_grad for p in trainer.components.unet.parameters())
    assert unet_frozen and all(not p.requires_grad for p in trainer.components.text_encoder.parameters())


def test_resume_reproduces_the_loss_curve(tiny_base, tmp_path):
    folder = photo_folder(tmp_path / "images", count=3)
    settings = {"train": {"steps": 6, "gradient_accumulation_steps": 2}, "checkpoint": {"every": 3}}
    whole = Trainer(tiny_config(tiny_base, folder, tmp_path / "whole", **settings))
    curve = [r["loss"] for r in whole.train()]

    first = Trainer(tiny_config(tiny_base, folder, tmp_path / "split", **settings))
    first.train(stop_at=4)  # "killed" after step 4; the last checkpoint is step 3
    assert [p.name for _, p in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step-00000003"]
    resumed_settings = {**settings, "train": {**settings["train"], "resume": "latest"}}
    second = Trainer(tiny_config(tiny_base, folder, tmp_path / "split", **resumed_settings))
    assert second.step == 3 and second.samples == 3 * 4
    rest = [r["loss"] for r in second.train()]
    assert rest == curve[3:]  # bit for bit
    for (name, a), b in zip(whole.adaptor.named_parameters(), second.adaptor.parameters()):
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(whole.ema.shadow, second.ema.shadow))
    assert second.ema.updates == whole.ema.updates == 6


def test_interrupted_checkpoint_write_leaves_the_previous_one(tiny_base, tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "images", count=2)
    settings = {"train": {"steps": 4}, "checkpoint": {"every": 2}}
    trainer = Trainer(tiny_config(tiny_base, folder, tmp_path / "run", **settings))
    trainer.train(stop_at=2)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step-00000002"

    def killed_mid_write(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 3])  # a third of the file is on disk ...
        raise KeyboardInterrupt("killed while writing the checkpoint")  # ... when the process dies

    monkeypatch.setattr(checkpoints_module, "save_file", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()  # step 3, then the step-4 checkpoint write dies
    assert trainer.step == 4
    assert latest_checkpoint(checkpoints).name == "step-00000002"
    assert not (checkpoints / "step-00000004").exists()
    # A hard kill leaves its temporary folder behind: readers ignore it.
    stray = checkpoints / ".tmp-step-00000004-x"
    stray.mkdir()
    (stray / "tensors.safetensors").write_bytes(b"\x00" * 10)
    (stray / "trainer_state.json").write_text("{")
    assert [p.name for _, p in list_checkpoints(checkpoints)] == ["step-00000002"]
    tensors, state = read_checkpoint(latest_checkpoint(checkpoints))
    assert state["step"] == 2 and "ema/controlnet.conv_in.weight" in tensors

    monkeypatch.undo()
    settings["train"]["resume"] = "latest"
    resumed = Trainer(tiny_config(tiny_base, folder, tmp_path / "run", **settings))
    assert resumed.step == 2
    resumed.train()
    assert [p.name for p in sorted(checkpoints.iterdir())] == ["step-00000002", "step-00000004"]  # stray removed


def test_exported_adaptor_loads_and_predicts_like_the_training_module(tiny_base, tmp_path):
    folder = photo_folder(tmp_path / "images", count=2)
    trainer = Trainer(tiny_config(tiny_base, folder, tmp_path / "run", train={"steps": 3}))
    trainer.train()
    unet = trainer.components.unet
    inputs = fixed_inputs(trainer)

    exported = load_adaptor(tmp_path / "run" / "adaptor.safetensors")  # EMA weights by default
    config, _ = read_adaptor_file(tmp_path / "run" / "adaptor.safetensors")
    assert config == trainer.adaptor.config
    trainer.adaptor.eval()
    with torch.no_grad():
        with trainer.ema.swapped():
            expected = predict_noise(unet, trainer.adaptor, *inputs)
            training_path = controlled_prediction(unet, trainer.adaptor, *inputs, forward=trainer.model)
        raw = predict_noise(unet, trainer.adaptor, *inputs)
        got = predict_noise(unet, exported, *inputs)
        base = unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(training_path, expected, rtol=0, atol=0)
    assert (got - base).abs().max() > 1e-4  # training moved the adaptor away from the identity
    assert (got - raw).abs().max() > 1e-6  # and the EMA differs from the raw weights

    raw_file = trainer.export(tmp_path / "raw.safetensors", weights="raw")
    with torch.no_grad():
        torch.testing.assert_close(predict_noise(unet, load_adaptor(raw_file), *inputs), raw, rtol=0, atol=0)
    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    from_checkpoint = export_checkpoint(last, tmp_path / "ck.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(predict_noise(unet, load_adaptor(from_checkpoint), *inputs), got, rtol=0, atol=0)
    metadata = read_adaptor_file(raw_file)[0]
    assert metadata.prediction_type == "epsilon" and metadata.fusion == "modulation"

    reset_accelerate()  # a new run that starts from the exported adaptor
    config = tiny_config(tiny_base, folder, tmp_path / "again", model={"init_adaptor": str(raw_file)})
    again = Trainer(config)
    for (name, a), b in zip(again.adaptor.named_parameters(), load_adaptor(raw_file).parameters()):
        assert torch.equal(a, b), name


def test_precision_checkpointing_fusion_and_v_prediction_options(tiny_base, tmp_path):
    folder = photo_folder(tmp_path / "images", count=2)
    plain = Trainer(tiny_config(tiny_base, folder, tmp_path / "a"))
    batch = plain.make_batch(plain.load_positions([0, 1]))
    loss = plain.compute_loss(batch)
    loss.backward()
    grads = [p.grad.clone() for p in plain.adaptor.parameters()]

    checkpointed = Trainer(
        tiny_config(
            tiny_base,
            folder,
            tmp_path / "b",
            train={"gradient_checkpointing": True, "unet_gradient_checkpointing": True},
        )
    )
    loss_ckpt = checkpointed.compute_loss(batch)
    loss_ckpt.backward()
    assert loss_ckpt.item() == pytest.approx(loss.item(), rel=1e-6)
    for a, p in zip(grads, checkpointed.adaptor.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-7)

    reset_accelerate()
    bf16 = Trainer(tiny_config(tiny_base, folder, tmp_path / "c", train={"mixed_precision": "bf16", "steps": 1}))
    assert next(bf16.components.unet.parameters()).dtype == torch.bfloat16
    record = bf16.train()[-1]
    assert next(bf16.adaptor.parameters()).dtype == torch.float32  # float32 master weights
    assert record["loss"] == pytest.approx(loss.item(), rel=0.05)  # the same first batch, in bfloat16

    reset_accelerate()
    v_base = write_tiny_base(tmp_path / "tiny-v", prediction_type="v_prediction")
    additive = Trainer(tiny_config(v_base, folder, tmp_path / "d", model={"fusion": "additive"}, train={"steps": 1}))
    assert additive.prediction_type == "v_prediction" and additive.adaptor.config.prediction_type == "v_prediction"
    assert additive.adaptor.fusion == "additive"
    assert np.isfinite(additive.train()[-1]["loss"])
    assert read_adaptor_file(tmp_path / "d" / "adaptor.safetensors")[0].fusion == "additive"


def test_single_file_base_with_a_components_folder(tiny_base, tmp_path):
    from spire_core.models import LDM_UNET_PREFIX, BaseModelFileError, diffusers_to_ldm_unet
    from spire_core.training import load_components

    components = load_components(tiny_base)
    unet = components.unet
    ldm = diffusers_to_ldm_unet(unet.state_dict(), unet.config)
    single = tmp_path / "tiny-sd.safetensors"
    save_file({LDM_UNET_PREFIX + k: v.contiguous() for k, v in ldm.items()}, str(single))
    with pytest.raises(BaseModelFileError, match="model.components is needed"):
        load_components(single)
    loaded = load_components(single, components=tiny_base)
    assert loaded.info.source == "single_file"
    for (name, a), b in zip(unet.state_dict().items(), loaded.unet.state_dict().values()):
        assert torch.equal(a, b), name
    folder = photo_folder(tmp_path / "images", count=2)
    trainer = Trainer(tiny_config(single, folder, tmp_path / "run", model={"components": str(tiny_base)}))
    assert trainer.adaptor.config.controlnet_config["block_out_channels"] == [32, 64]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_training_and_resume(tiny_base, tmp_path, precision):
    folder = photo_folder(tmp_path / "images", count=2)
    settings = {"train": {"steps": 4, "mixed_precision": precision, "device": "auto"}, "checkpoint": {"every": 2}}
    trainer = Trainer(tiny_config(tiny_base, folder, tmp_path / "run", **settings))
    assert trainer.device.type == "cuda"
    whole = [r["loss"] for r in trainer.train()]
    assert all(np.isfinite(whole)) and next(trainer.adaptor.parameters()).dtype == torch.float32
    state = read_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))[1]
    assert (state["scaler"] is not None) == (precision == "fp16")
    assert "rng/cuda/0" in read_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))[0]
    reset_accelerate()
    settings["train"]["resume"] = str(tmp_path / "run" / "checkpoints" / "step-00000002")
    settings["train"]["output_dir"] = str(tmp_path / "resumed")
    resumed = Trainer(tiny_config(tiny_base, folder, tmp_path / "resumed", **settings))
    rest = [r["loss"] for r in resumed.train()]
    assert rest == pytest.approx(whole[2:], rel=1e-3)  # GPU kernels need not be bitwise deterministic


# ------------------------------------------------------------------------------------------------ command line


def test_cli_trains_validates_and_exports_through_accelerate_launch(tiny_base, tmp_path):
    photo_folder(tmp_path / "images", count=2)
    (tmp_path / "train.toml").write_text(
        f"""
[model]
base = "{tiny_base}"
[data]
folder = "images"
resolution = 64
num_workers = 1
[degradation]
preset = "light"
[train]
output_dir = "run"
batch_size = 1
gradient_accumulation_steps = 1
mixed_precision = "no"
[validation]
every = 2
num_images = 2
steps = 2
guidance_scale = 2.0
[checkpoint]
every = 2
"""
    )
    env = {**os.environ, "PYTHONPATH": str(PACK_DIR), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "spire_core.training", "--config", "train.toml", "train.steps=3", "train.device=cpu"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 3
    assert [p.name for _, p in list_checkpoints(run / "checkpoints")] == ["step-00000002", "step-00000003"]
    assert sorted(p.name for p in (run / "validation").glob("*.png")) == ["step-00000002.png", "step-00000003.png"]
    grid = Image.open(run / "validation" / "step-00000003.png")
    assert grid.size == (2 * 64, 3 * 64)  # rows: degraded, restored, clean
    assert load_adaptor(run / "adaptor.safetensors").num_skips == 4
    events = [r["event"] for r in read_log(run / "logs" / "train.jsonl")]
    assert events[:2] == ["data_scan", "start"] and events[-2:] == ["export", "end"]


def test_cli_errors_exit_2_with_a_message(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('[train]\nsteps = "many"\n')
    assert cli_main(["--config", str(tmp_path / "bad.toml")]) == 2
    assert "train.steps must be an integer" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "is not a SPIRE training checkpoint" in capsys.readouterr().err


def test_a_diverged_run_writes_no_checkpoint_or_adaptor_and_says_when(tiny_base, tmp_path):
    from spire_core.training import TrainingDiverged

    folder = photo_folder(tmp_path / "images", count=2)
    trainer = Trainer(tiny_config(tiny_base, folder, tmp_path / "run"))
    loaded = trainer.load_positions([0, 1])
    trainer.train_step(itertools.repeat(loaded))
    assert trainer.first_nonfinite_loss is None
    with torch.no_grad():  # what a diverged fp16 run leaves: the trunk's input convolution blows up
        trainer.adaptor.controlnet.conv_in.weight.fill_(float("inf"))
    record = trainer.train_step(itertools.repeat(loaded))
    assert not math.isfinite(record["loss"]) and trainer.first_nonfinite_loss == 2
    for write, what in ((trainer.save_checkpoint, "checkpoint"), (trainer.export, "exported adaptor")):
        with pytest.raises(TrainingDiverged) as caught:
            write()
        message = str(caught.value)
        assert message.startswith("training diverged: at step 2 ") and "controlnet.conv_in.weight" in message
        assert f"the loss first went non-finite at step 2. The {what} is not written." in message
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "adaptor.safetensors").exists()


def test_progress_bar_counts_the_steps_shows_the_loss_and_leaves_the_log_unchanged(
    tiny_base, tmp_path, monkeypatch, capsys
):
    folder = photo_folder(tmp_path / "images", count=2)
    runs = {}
    for forced in ("0", "1"):
        monkeypatch.setenv("SPIRE_PROGRESS", forced)
        reset_accelerate()
        out = tmp_path / f"run-{forced}"
        trainer = Trainer(tiny_config(tiny_base, folder, out, train={"steps": 3}))
        history = trainer.train()
        trainer.close()
        # the log without its clock readings and with the run's own folder named alike
        text = (out / "logs" / "train.jsonl").read_text(encoding="utf-8").replace(json.dumps(str(out))[1:-1], "OUT")
        records = [json.loads(line) for line in text.splitlines()]
        log = [{k: v for k, v in r.items() if k not in ("time", "seconds_per_step")} for r in records]
        runs[forced] = (trainer, history, log, capsys.readouterr())

    (off, _, off_log, off_io), (on, history, on_log, on_io) = runs["0"], runs["1"]
    assert on_log == off_log  # byte-equal JSON values, losses included: the bar changes nothing it logs
    assert [r["step"] for r in on_log if r["event"] == "step"] == [1, 2, 3]
    assert off.bar.n == 0  # a hidden bar counts nothing
    assert on.bar.n == on.step == 3 and on.bar.total == 3
    postfix = dict(item.split("=") for item in on.bar.postfix.split(", "))
    assert float(postfix["loss"]) == pytest.approx(history[-1]["loss"], abs=5e-6)
    assert float(postfix["lr"]) == pytest.approx(history[-1]["lr"], rel=1e-2)
    assert on_io.out == off_io.out == ""
    shown = re.findall(r"train: 100%\|#+\| 3/3 \[[^\]]*loss=([0-9.]+)", on_io.err)
    assert shown and float(shown[-1]) == pytest.approx(history[-1]["loss"], abs=5e-6)
    assert "train:" not in off_io.err


def test_validation_restore_with_a_denoise_start_begins_from_the_noised_input():
    """The lower the denoise, the closer the result stays to the input's codec round trip (the random tiny UNet's
    predictions still move it: one step at the lowest noise level)."""
    from spire_core.models import SpireAdaptor
    from spire_core.training.tiny import build_tiny_components
    from spire_core.training.validation import restore

    components = build_tiny_components("sd1")
    adaptor = SpireAdaptor.from_unet(components.unet, base_family="sd1")
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = components.vae.encode(image * 2 - 1).latent_dist.mean
        roundtrip = ((components.vae.decode(latents).sample + 1) / 2).clamp(0, 1)

    def distance(**options):
        with torch.no_grad():
            out = restore(
                components, adaptor, image, ["Remove all degradation"] * 2, ["", ""], guidance_scale=1.0, **options
            )
        return float((out - roundtrip).abs().mean())

    distances = [distance(steps=2, denoise=denoise) for denoise in (0.02, 0.3, 1.0)]
    assert distances[0] < distances[1] < distances[2] and distances[0] < 0.75 * distances[2], distances
    with pytest.raises(ValueError, match=r"denoise must be in \(0, 1\]"):
        restore(components, adaptor, image, ["Remove all degradation"] * 2, ["", ""], denoise=1.5)


def test_an_sdxl_base_trains_resumes_bit_for_bit_and_exports(tmp_path):
    """SDXL bases train as SD ones: the UNet gets the semantic prompt's pooled embedding and the crop's size ids,
    the adaptor the restoration prompt's; a resumed run equals an uninterrupted one; the export is an SDXL adaptor."""
    base = write_tiny_base(tmp_path / "tiny-sdxl", family="sdxl")
    folder = photo_folder(tmp_path / "images", count=3)
    settings = {"train": {"steps": 4}, "checkpoint": {"every": 2}}
    whole = Trainer(tiny_config(base, folder, tmp_path / "whole", **settings))
    assert whole.components.sdxl and whole.adaptor.config.base_family == "sdxl"
    curve = [r["loss"] for r in whole.train()]
    assert all(math.isfinite(loss) for loss in curve) and len(set(curve)) == len(curve)

    first = Trainer(tiny_config(base, folder, tmp_path / "split", **settings))
    first.train(stop_at=3)
    resumed = {**settings, "train": {**settings["train"], "resume": "latest"}}
    second = Trainer(tiny_config(base, folder, tmp_path / "split", **resumed))
    assert second.step == 2
    assert [r["loss"] for r in second.train()] == curve[2:]  # bit for bit
    for (name, a), b in zip(whole.adaptor.named_parameters(), second.adaptor.parameters()):
        assert torch.equal(a, b), name
    exported = load_adaptor(tmp_path / "whole" / "adaptor.safetensors")
    assert exported.config.added_conditioning and exported.config.base_family == "sdxl"


def test_a_narrower_trunk_trains_and_exports_format_3(tmp_path):
    base = write_tiny_base(tmp_path / "tiny-sd2", family="sd2")
    folder = photo_folder(tmp_path / "images", count=2)
    trainer = Trainer(tiny_config(base, folder, tmp_path / "run", model={"trunk": 32}, train={"steps": 2}))
    assert trainer.adaptor.config.controlnet_config["block_out_channels"] == [32, 64]
    losses = [r["loss"] for r in trainer.train()]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    exported = load_adaptor(tmp_path / "run" / "adaptor.safetensors")
    assert exported.config.format_version == 3 and exported.config.base_block_out_channels == [64, 128]
    with pytest.raises(ConfigError, match="model.trunk must be one of full, half, quarter"):
        tiny_config(base, folder, tmp_path / "bad", model={"trunk": "tiny"})
    # starting from that adaptor: its own size (or none named) is accepted, another size is refused by name
    model = trainer.config.model
    start = str(tmp_path / "run" / "adaptor.safetensors")
    for trunk in ("full", "half", 32):
        again = build_adaptor(replace(model, init_adaptor=start, trunk=trunk), trainer.components, 0)
        assert again.config.controlnet_config["block_out_channels"] == [32, 64]
    with pytest.raises(ConfigError, match="asks for a trunk of \\[64, 128\\] channels, but model.init_adaptor"):
        build_adaptor(replace(model, init_adaptor=start, trunk=64), trainer.components, 0)
    with pytest.raises(ConfigError, match="model.trunk: a trunk of 48 channels does not fit"):
        build_adaptor(replace(model, init_adaptor=start, trunk=48), trainer.components, 0)


def test_ema_moves_towards_the_weights_swaps_them_in_and_out_and_copies_them_for_good():
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.ones(2, 2))
    module.bias = torch.nn.Parameter(torch.zeros(2))
    ema = EMA(module, decay=0.99)
    with torch.no_grad():
        module.weight.fill_(3.0)
        module.bias.fill_(-1.0)
    ema.update()  # first update: decay min(0.99, 1/10) = 0.1, so the shadow moves 0.9 of the way
    assert ema.updates == 1 and math.isclose(ema.current_decay(), 2 / 11)
    assert torch.allclose(ema.shadow[0], torch.full((2, 2), 2.8)) and torch.allclose(
        ema.shadow[1], torch.full((2,), -0.9)
    )
    with ema.swapped():
        assert torch.allclose(module.weight, torch.full((2, 2), 2.8))
    assert torch.equal(module.weight, torch.full((2, 2), 3.0)) and torch.equal(module.bias, torch.full((2,), -1.0))
    ema.copy_to_module()
    assert torch.allclose(module.weight, torch.full((2, 2), 2.8)) and torch.allclose(
        module.bias, torch.full((2,), -0.9)
    )
    assert module.weight.data_ptr() != ema.shadow[0].data_ptr()  # copied, not shared: the shadow stays its own
