"""The adaptor nodes in real ComfyUI graphs: KSampler, KSamplerAdvanced and SamplerCustomAdvanced, the core
ControlNet nodes, chaining, prompts, and clear errors for bad input (tiny SD1 eps / SD2 v models)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from spire_test_support import tiny_comfy

from spire_core.models import SpireAdaptor, load_base_unet, save_adaptor

STEPS = 3


@pytest.fixture(scope="module")
def setup(comfy, tmp_path_factory):
    """A small degraded photo in the input folder and fresh/random adaptors for both tiny families."""
    import skimage.data

    image = Image.fromarray(skimage.data.astronaut()).resize((64, 48), Image.Resampling.BICUBIC)
    image.save(comfy.input_dir / "spire_small.png")
    Image.fromarray(skimage.data.coffee()).resize((64, 48), Image.Resampling.BICUBIC).save(
        comfy.input_dir / "spire_small2.png"
    )
    folder = comfy.models_dir("spire")
    work = tmp_path_factory.mktemp("node_models")
    for family in ("sd1", "sd2"):
        checkpoint = tiny_comfy.save_checkpoint(work / f"{family}.safetensors", family)
        unet, info = load_base_unet(checkpoint)
        fresh = SpireAdaptor.from_unet(unet, base_family=family, prediction_type=info.prediction_type)
        save_adaptor(fresh, folder / f"nodes_{family}_fresh.safetensors")
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in fresh.head_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        save_adaptor(fresh, folder / f"nodes_{family}_random.safetensors")
        additive = SpireAdaptor.from_unet(
            unet, fusion="additive", base_family=family, prediction_type=info.prediction_type
        )
        with torch.no_grad():
            for p in [
                *additive.controlnet.controlnet_down_blocks.parameters(),
                *additive.controlnet.controlnet_mid_block.parameters(),
            ]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        save_adaptor(additive, folder / f"nodes_{family}_additive.safetensors")
    return folder


def graph(
    family="sd1",
    adaptor="random",
    route="spire",
    sampler="ksampler",
    restoration="Remove all degradation",
    strength=1.0,
    percent=(0.0, 1.0),
    chain_core=None,
    image="spire_small.png",
    cfg=4.0,
    seed=3,
):
    """An API prompt: tiny checkpoint -> prompts -> (adaptor) -> sampler -> capture the latent."""
    p = {
        "ckpt": {"class_type": "SPIRETest_TinyCheckpointLoader", "inputs": {"ckpt_name": f"tiny_{family}"}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "an astronaut, photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
    }
    positive, negative = ["pos", 0], ["neg", 0]
    if chain_core is not None:  # a core ControlNet (an additive adaptor file loaded by the core loader) first
        p["core_cn"] = {"class_type": "SPIRE_AdaptorLoader", "inputs": {"adaptor_name": chain_core}}
        p["core_apply"] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": positive,
                "negative": negative,
                "control_net": ["core_cn", 0],
                "image": ["img", 0],
                "strength": 0.8,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        }
        p["core_enc_p"] = {
            "class_type": "CLIPTextEncodeControlnet",
            "inputs": {"clip": ["ckpt", 1], "conditioning": ["core_apply", 0], "text": "Deblur with sigma 2"},
        }
        p["core_enc_n"] = {
            "class_type": "CLIPTextEncodeControlnet",
            "inputs": {"clip": ["ckpt", 1], "conditioning": ["core_apply", 1], "text": "Deblur with sigma 2"},
        }
        positive, negative = ["core_enc_p", 0], ["core_enc_n", 0]
    if adaptor is not None:
        p["load"] = {
            "class_type": "SPIRE_AdaptorLoader",
            "inputs": {"adaptor_name": f"nodes_{family}_{adaptor}.safetensors"},
        }
        if route == "spire":
            p["apply"] = {
                "class_type": "SPIRE_ApplyAdaptor",
                "inputs": {
                    "positive": positive,
                    "negative": negative,
                    "control_net": ["load", 0],
                    "clip": ["ckpt", 1],
                    "image": ["img", 0],
                    "restoration_prompt": restoration,
                    "strength": strength,
                    "start_percent": percent[0],
                    "end_percent": percent[1],
                },
            }
            positive, negative = ["apply", 0], ["apply", 1]
        else:  # core nodes only: encode the restoration prompt, then core Apply ControlNet
            p["rp"] = {
                "class_type": "SPIRE_EncodeRestorationPrompt",
                "inputs": {"clip": ["ckpt", 1], "conditioning": positive, "restoration_prompt": restoration},
            }
            p["rn"] = {
                "class_type": "CLIPTextEncodeControlnet",
                "inputs": {"clip": ["ckpt", 1], "conditioning": negative, "text": restoration},
            }
            p["apply"] = {
                "class_type": "ControlNetApplyAdvanced",
                "inputs": {
                    "positive": ["rp", 0],
                    "negative": ["rn", 0],
                    "control_net": ["load", 0],
                    "image": ["img", 0],
                    "strength": strength,
                    "start_percent": percent[0],
                    "end_percent": percent[1],
                },
            }
            positive, negative = ["apply", 0], ["apply", 1]
    if sampler == "ksampler":
        p["sample"] = {
            "class_type": "KSampler",
            "inputs": {
                "model": ["ckpt", 0],
                "seed": seed,
                "steps": STEPS,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": positive,
                "negative": negative,
                "latent_image": ["enc", 0],
                "denoise": 1.0,
            },
        }
        latent = ["sample", 0]
    elif sampler == "advanced":
        p["sample"] = {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["ckpt", 0],
                "add_noise": "enable",
                "noise_seed": seed,
                "steps": STEPS,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": positive,
                "negative": negative,
                "latent_image": ["enc", 0],
                "start_at_step": 0,
                "end_at_step": 10000,
                "return_with_leftover_noise": "disable",
            },
        }
        latent = ["sample", 0]
    else:
        p["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
        p["guider"] = {
            "class_type": "CFGGuider",
            "inputs": {"model": ["ckpt", 0], "positive": positive, "negative": negative, "cfg": cfg},
        }
        p["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        p["sched"] = {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["ckpt", 0], "scheduler": "normal", "steps": STEPS, "denoise": 1.0},
        }
        p["sample"] = {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["noise", 0],
                "guider": ["guider", 0],
                "sampler": ["select", 0],
                "sigmas": ["sched", 0],
                "latent_image": ["enc", 0],
            },
        }
        latent = ["sample", 0]
    p["cap"] = {"class_type": "SPIRETest_Capture", "inputs": {"value": latent, "key": "latent"}}
    return p


def run(comfy, **kwargs) -> torch.Tensor:
    comfy.run(graph(**kwargs))
    return tiny_comfy.CAPTURED["latent"]


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_fresh_adaptor_is_bit_identical_to_the_base_model_and_a_trained_one_is_not(comfy, setup, family):
    base = run(comfy, family=family, adaptor=None)
    assert torch.equal(run(comfy, family=family, adaptor="fresh"), base)
    assert torch.equal(run(comfy, family=family, adaptor="random", strength=0.0), base)
    changed = run(comfy, family=family, adaptor="random")
    assert float((changed - base).abs().max()) > 1e-3


def test_ksampler_ksampleradvanced_and_samplercustomadvanced_agree(comfy, setup):
    plain = run(comfy, sampler="ksampler")
    assert torch.equal(run(comfy, sampler="advanced"), plain)
    assert float((run(comfy, sampler="custom") - plain).abs().max()) <= 1e-6


def test_core_controlnet_nodes_drive_the_same_adaptor(comfy, setup):
    """Core Apply ControlNet + restoration-prompt encoding on the conditioning equals 'Apply Adaptor (SPIRE)'
    (SD1: both encode with the CLIP's final layer)."""
    spire = run(comfy, restoration="Deblur with sigma 1.5; Denoise with sigma 0.08")
    core = run(comfy, route="core", restoration="Deblur with sigma 1.5; Denoise with sigma 0.08")
    assert torch.equal(core, spire)
    for sampler in ("advanced", "custom"):
        other = run(comfy, route="core", sampler=sampler, restoration="Deblur with sigma 1.5; Denoise with sigma 0.08")
        assert float((other - spire).abs().max()) <= 1e-6


def test_restoration_prompt_and_gating_change_the_output(comfy, setup):
    blind = run(comfy)
    other = run(comfy, restoration="Denoise with sigma 0.3")
    assert float((other - blind).abs().max()) > 1e-4
    late = run(comfy, percent=(0.5, 1.0))
    base = run(comfy, adaptor=None)
    assert float((late - blind).abs().max()) > 1e-4 and float((late - base).abs().max()) > 1e-4
    assert torch.equal(run(comfy, percent=(1.0, 1.0)), base)  # acts at no step


def test_chaining_after_a_core_controlnet(comfy, setup):
    core_only = run(comfy, adaptor=None, chain_core="nodes_sd1_additive.safetensors")
    both = run(comfy, chain_core="nodes_sd1_additive.safetensors")
    spire_only = run(comfy)
    base = run(comfy, adaptor=None)
    assert float((core_only - base).abs().max()) > 1e-3  # the first control acts
    assert float((both - core_only).abs().max()) > 1e-4 and float((both - spire_only).abs().max()) > 1e-4
    # a fresh SPIRE adaptor chained after the core control leaves it exactly as it was
    assert torch.equal(run(comfy, adaptor="fresh", chain_core="nodes_sd1_additive.safetensors"), core_only)


def batch_graph(prompts: str) -> dict:
    p = graph(restoration=prompts)
    p["img2"] = {"class_type": "LoadImage", "inputs": {"image": "spire_small2.png"}}
    p["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["img", 0], "image2": ["img2", 0]}}
    p["enc"]["inputs"]["pixels"] = ["batch", 0]
    p["apply"]["inputs"]["image"] = ["batch", 0]
    return p


def test_batch_of_two_with_per_image_prompts(comfy, setup):
    comfy.run(batch_graph("Remove all degradation\nDenoise with sigma 0.3"))
    mixed = tiny_comfy.CAPTURED["latent"]
    comfy.run(batch_graph("Remove all degradation"))  # one line: the same prompt for both images
    same = tiny_comfy.CAPTURED["latent"]
    assert mixed.shape[0] == 2
    first = run(comfy, restoration="Remove all degradation")
    scale = float(first.abs().max())
    assert float((mixed[0] - first[0]).abs().max()) <= 1e-6 * scale  # item 0: its own image, prompt and noise
    # the two batches differ only in item 1's prompt: item 0 is bit-identical, item 1 changes
    assert torch.equal(mixed[0], same[0])
    assert float((mixed[1] - same[1]).abs().max()) > 1e-5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"restoration_prompt": "Sharpen a lot"}, "restoration_prompt"),
        ({"restoration_prompt": "Denoise with sigma 7"}, "Denoise"),
        ({"restoration_prompt": "Deblur with sigma 1\nDenoise with sigma 0.1"}, "2 lines but the image batch has 1"),
        ({"start_percent": 0.8, "end_percent": 0.2}, "start_percent"),
    ],
)
def test_bad_input_gives_a_clear_error(comfy, setup, change, message):
    p = graph()
    p["apply"]["inputs"].update(change)
    assert message in comfy.run_error(p)


def test_wrong_files_are_refused_with_what_they_are(comfy, setup, tmp_path):
    from safetensors.torch import save_file

    folder = setup
    tiny_comfy.save_checkpoint(folder / "oops_checkpoint.safetensors", "sd1")
    (folder / "oops_pickle.ckpt").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    good = (folder / "nodes_sd1_random.safetensors").read_bytes()
    (folder / "oops_truncated.safetensors").write_bytes(good[: len(good) // 2])
    save_file({"control_model.zero_convs.0.0.weight": torch.zeros(4, 4, 1, 1)}, str(folder / "oops_cn.safetensors"))
    cases = {
        "oops_checkpoint.safetensors": "base Stable Diffusion checkpoint",
        "oops_pickle.ckpt": "pickle",
        "oops_truncated.safetensors": "truncated",
        "oops_cn.safetensors": "plain ControlNet",
    }
    for name, what in cases.items():
        p = graph()
        p["load"]["inputs"]["adaptor_name"] = name
        message = comfy.run_error(p)
        assert what in message and "models/spire" in message, (name, message)
    # an adaptor of the other family does not fit: a clear error when sampling starts
    p = graph(family="sd1")
    p["load"]["inputs"]["adaptor_name"] = "nodes_sd2_random.safetensors"
    message = comfy.run_error(p)
    assert "does not fit" in message and "model channels: adaptor 64, base model 32" in message
    # and the next prompt runs normally
    assert run(comfy).shape == (1, 4, 6, 8)


def test_a_diverged_adaptor_is_refused_and_an_untrained_one_says_so(comfy, setup, caplog):
    import logging

    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = setup
    with safe_open(str(folder / "nodes_sd1_random.safetensors"), "pt") as f:
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no iteration
        metadata = f.metadata()
    state["spire_beta_mid.weight"] = state["spire_beta_mid.weight"].clone().fill_(float("nan"))
    save_file(state, str(folder / "nodes_sd1_diverged.safetensors"), metadata=metadata)
    p = graph()
    p["load"]["inputs"]["adaptor_name"] = "nodes_sd1_diverged.safetensors"
    message = comfy.run_error(p)
    assert "NaN or Inf values" in message and "training run that made it diverged" in message
    with caplog.at_level(logging.WARNING):
        assert run(comfy, adaptor="fresh").shape == (1, 4, 6, 8)  # it still runs: an exact identity
    assert any("nodes_sd1_fresh.safetensors is untrained" in r.getMessage() for r in caplog.records)


def test_a_nan_strength_is_refused_before_sampling(comfy, setup):
    p = graph()
    p["apply"]["inputs"]["strength"] = float("nan")
    assert "strength=nan: expected a finite number" in comfy.run_error(p)
