"""The control benchmark: what a restorer does with a restoration prompt's types and numbers.

SPIRE's promise is that the prompt decides *what* is removed and *how much*. This benchmark measures it for any
restorer, a callable ``restorer(degraded, prompts) -> restored`` on (N, 3, H, W) float images in [0, 1] with one
prompt per image (a SPIRE adaptor through a pipeline, a baseline, the exact ``OracleRestorer``), on clean crops
degraded by a known isotropic Gaussian blur (``blur`` px) followed by Gaussian noise (``noise``), one field per
crop:

- **noise ladder**: the same degraded crops restored with ``Deblur with sigma {blur}`` plus
  ``Denoise with sigma {f * noise}`` for each fraction f of ``fractions`` (f = 0: no Denoise clause). The noise
  left (``estimators.residual_noise`` against the clean crop) should follow the ideal
  ``sqrt(noise^2 - (f * noise)^2)`` (the named level as printed);
- **blur ladder**: ``Denoise with sigma {noise}`` plus ``Deblur with sigma {f * blur}``; the blur left
  (``estimators.residual_blur_sigma``) should follow ``sqrt(blur^2 - (f * blur)^2)``;
- **decoupling**: the f = 0 points of the ladders: "Deblur only" must keep the noise, "Denoise only" must keep
  the blur; reported as the share of the input's measured level the output keeps;
- **blind**: the same degraded crops restored with "Remove all degradation": PSNR of the restoration and of the
  degraded input against the clean crop (every crop carries both degradations, so the mean PSNR is finite and
  says what blind restoration gains).

Targets (``TARGETS``; the miniature's, measured on means over crops): both ladders monotonic (Spearman -1 between
named level and measured residual), calibrated (every ladder point within 0.25 x noise / 0.3 x blur of its ideal),
decoupled (the unnamed degradation keeps at least 70 % of its measured level) and blind restoration at least 2 dB
above its input. ``run_control`` returns a JSON-ready dict; ``control_markdown`` and ``plot_ladders`` report it.

A mean over crops can hide how it is made: a mean residual of half the noise may be every crop half denoised or
half the crops untouched and half fully denoised. So each ladder point also reports its per-crop quartiles and the
share of crops within the calibration tolerance of the ideal (``crops_within_tolerance``; the ladder's worst point:
``min_crops_within_tolerance``): calibration per image, not only on average. These are reported, not targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..degradation import (
    DegradationParams,
    degrade,
    degrade_graded,
    manual_params,
    prompt_for,
)
from ..prompt import BLIND_PROMPT, RestorationRequest, parse, quantize, render
from .estimators import ideal_residual, residual_blur_sigma, residual_noise
from .metrics import psnr_per_image

Restorer = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
"""``restorer(degraded, prompts)``: (N, 3, H, W) float in [0, 1] and N prompts -> (N, 3, H, W) restored."""

CONTROL_FORMAT = "spire-control/1"

TARGETS = {
    "spearman": -1.0,
    "noise_calibration": 0.25,
    "blur_calibration": 0.3,
    "decoupling_kept": 0.7,
    "blind_gain_db": 2.0,
}
"""The targets: Spearman of both ladders, calibration tolerances as fractions of the present level, the share of
an unnamed degradation an output must keep, and the blind PSNR gain over the input (dB)."""


@dataclass(frozen=True)
class ControlSetting:
    """What the benchmark degrades and asks.

    Attributes:
        noise: present Gaussian noise sigma of the ladder crops ([0, 1] scale); 0.12 makes every quarter print
            exactly (0.03, 0.06, 0.09, 0.12).
        blur: present isotropic Gaussian blur sigma of the ladder crops (pixels).
        fractions: ladder points as fractions of the present level, ascending, starting at 0.
        seed: the noise fields.
    """

    noise: float = 0.12
    blur: float = 2.0
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.noise <= 0.5 or not 0 < self.blur <= 8:
            raise ValueError(f"control: noise in (0, 0.5] and blur in (0, 8] px, got {self.noise} and {self.blur}")
        fractions = tuple(self.fractions)
        if len(fractions) < 3 or fractions[0] != 0 or list(fractions) != sorted(set(fractions)) or fractions[-1] > 1:
            raise ValueError(f"control: fractions must start at 0, ascend and end at most at 1; got {fractions}")
        object.__setattr__(self, "fractions", fractions)


@dataclass
class ControlInputs:
    """The degraded crops of one benchmark run.

    Attributes:
        clean: (N, 3, H, W) the clean crops.
        ladder: (N, 3, H, W) blurred then noisy crops (the ladders, the decoupling points and the blind set).
        ladder_params: per crop, the params of ``ladder``.
    """

    clean: torch.Tensor
    ladder: torch.Tensor
    ladder_params: list[DegradationParams]


def _item_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7919 + 17) % 2**53


def control_inputs(clean: torch.Tensor, setting: ControlSetting) -> ControlInputs:
    """Degrade ``clean`` (N, 3, H, W) in [0, 1] for the benchmark (deterministic)."""
    if clean.dim() != 4 or clean.shape[1] != 3 or clean.shape[0] < 1:
        raise ValueError(f"control: clean crops must be (N, 3, H, W), got {tuple(clean.shape)}")
    n = clean.shape[0]
    ladder_params = [
        manual_params(blur_sigma=setting.blur, noise_sigma=setting.noise, seed=_item_seed(setting.seed, i))
        for i in range(n)
    ]
    return ControlInputs(clean=clean, ladder=degrade(clean, ladder_params).images, ladder_params=ladder_params)


def ladder_requests(kind: str, setting: ControlSetting) -> list[RestorationRequest]:
    """The requests of a ladder (``kind`` "noise" or "blur"), one per fraction, quantised as printed."""
    out = []
    for fraction in setting.fractions:
        if kind == "noise":
            request = RestorationRequest(deblur=setting.blur, denoise=fraction * setting.noise or None)
        elif kind == "blur":
            request = RestorationRequest(deblur=fraction * setting.blur or None, denoise=setting.noise)
        else:
            raise ValueError(f"ladder kind is 'noise' or 'blur', got {kind!r}")
        out.append(quantize(request))
    return out


def run_label(value: float) -> str:
    """How a report names a run by the value of one of its settings (``w_r=2``, ``start=0.5``): 6 significant
    digits."""
    return f"{value:g}"


def variant_name(name: str, scale: float, start: float) -> str:
    """How a report names restorer ``name`` run with restoration guidance ``scale`` from denoise ``start``
    (``adaptor w_r=2 start=0.9``; a scale or start of 1 is not named)."""
    guided = [f"w_r={run_label(scale)}"] if scale != 1 else []
    return " ".join([name, *guided, *([f"start={run_label(start)}"] if start != 1 else [])])


def labels_are_distinct(values: Sequence[float]) -> bool:
    """Whether ``values`` keep distinct labels (``run_label``) and only 1 itself is labelled ``1``, so that no run
    of a report overwrites or passes for another."""
    labels = [run_label(v) for v in values]
    return len(set(labels)) == len(labels) and all(v == 1 for v, label in zip(values, labels) if label == "1")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm > 0 else 0.0


def _restore(restorer: Restorer, degraded: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    out = restorer(degraded, prompts)
    if not isinstance(out, torch.Tensor) or out.shape != degraded.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"control: the restorer returned {shape}; expected {tuple(degraded.shape)}")
    return out.detach().float().cpu().clamp(0, 1)


def _round(values: torch.Tensor | Sequence[float], digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in values]


def _ladder(
    restorer: Restorer, inputs: ControlInputs, setting: ControlSetting, kind: str
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    present = setting.noise if kind == "noise" else setting.blur
    key = "denoise" if kind == "noise" else "deblur"
    measure = residual_noise if kind == "noise" else residual_blur_sigma
    other = residual_blur_sigma if kind == "noise" else residual_noise
    tolerance = TARGETS[f"{kind}_calibration"] * present
    points, outputs = [], []
    for fraction, request in zip(setting.fractions, ladder_requests(kind, setting)):
        prompt = render(request)
        output = _restore(restorer, inputs.ladder, [prompt] * inputs.ladder.shape[0])
        outputs.append(output)
        named = getattr(request, key) or 0.0
        measured = measure(output, inputs.clean)
        ideal = ideal_residual(present, named)
        points.append(
            {
                "fraction": fraction,
                "prompt": prompt,
                "named": named,
                "ideal": round(ideal, 5),
                "measured": round(float(measured.mean()), 5),
                "measured_per_crop": _round(measured),
                "quartiles": _round(torch.quantile(measured.double(), torch.tensor([0.25, 0.5, 0.75]).double())),
                "crops_within_tolerance": round(float(((measured - ideal).abs() <= tolerance).double().mean()), 4),
                "other": round(float(other(output, inputs.clean).mean()), 5),
                "psnr_db": round(float(psnr_per_image(output, inputs.clean).clamp(max=99).mean()), 3),
            }
        )
    named = [p["named"] for p in points]
    measured = [p["measured"] for p in points]
    errors = [abs(p["measured"] - p["ideal"]) for p in points]
    rho = spearman(named, measured)
    return {
        "present": present,
        "unit": "[0, 1] std" if kind == "noise" else "px",
        "measure": measure.__name__,
        "other_measure": other.__name__,
        "points": points,
        "spearman": round(rho, 4),
        "monotonic": rho <= TARGETS["spearman"] + 1e-9,
        "max_calibration_error": round(max(errors), 5),
        "calibration_tolerance": round(tolerance, 5),
        "calibrated": max(errors) <= tolerance,
        "min_crops_within_tolerance": min(p["crops_within_tolerance"] for p in points),
    }, outputs


def run_control(restorer: Restorer, clean: torch.Tensor, setting: ControlSetting | None = None) -> dict[str, Any]:
    """Run the whole benchmark for one restorer.

    Args:
        restorer: see ``Restorer``; called once per ladder point and once for the blind set, with all crops.
        clean: (N, 3, H, W) float in [0, 1], H and W at least 32 (as the restorer needs them, e.g. multiples of 8).
        setting: levels, fractions and seed (default ``ControlSetting()``).

    Returns:
        A JSON-ready dict (``CONTROL_FORMAT``): the two ladders, decoupling, blind PSNR, reference readings of the
        estimators (the clean crops against themselves, the degraded input) and which targets are met.
    """
    setting = setting or ControlSetting()
    inputs = control_inputs(clean.float().cpu(), setting)
    noise, noise_outputs = _ladder(restorer, inputs, setting, "noise")
    blur, blur_outputs = _ladder(restorer, inputs, setting, "blur")
    input_noise = float(residual_noise(inputs.ladder, inputs.clean).mean())
    input_blur = float(residual_blur_sigma(inputs.ladder, inputs.clean).mean())
    deblur_only = noise["points"][0]  # f = 0 of the noise ladder: only Deblur named, the noise must stay
    denoise_only = blur["points"][0]  # f = 0 of the blur ladder: only Denoise named, the blur must stay
    kept_noise = deblur_only["measured"] / input_noise
    kept_blur = denoise_only["measured"] / input_blur
    decoupling = {
        "deblur_only": {"prompt": deblur_only["prompt"], "input_noise": round(input_noise, 5)}
        | {"output_noise": deblur_only["measured"], "kept": round(kept_noise, 4)},
        "denoise_only": {"prompt": denoise_only["prompt"], "input_blur": round(input_blur, 5)}
        | {"output_blur": denoise_only["measured"], "kept": round(kept_blur, 4)},
        "target_kept": TARGETS["decoupling_kept"],
        "decoupled": min(kept_noise, kept_blur) >= TARGETS["decoupling_kept"],
    }
    n = inputs.clean.shape[0]
    restored = _restore(restorer, inputs.ladder, [BLIND_PROMPT] * n)
    before = psnr_per_image(inputs.ladder, inputs.clean).clamp(max=99)
    after = psnr_per_image(restored, inputs.clean).clamp(max=99)
    gain = float(after.mean() - before.mean())
    blind = {
        "prompt": BLIND_PROMPT,
        "prompt_implied": prompt_for(inputs.ladder_params[0]),
        "psnr_degraded_db": round(float(before.mean()), 3),
        "psnr_restored_db": round(float(after.mean()), 3),
        "gain_db": round(gain, 3),
        "target_gain_db": TARGETS["blind_gain_db"],
        "met": gain >= TARGETS["blind_gain_db"],
    }
    reference = {
        "clean": {
            "noise": round(float(residual_noise(inputs.clean, inputs.clean).mean()), 5),
            "blur": round(float(residual_blur_sigma(inputs.clean, inputs.clean).mean()), 5),
        },
        "degraded": {"noise": round(input_noise, 5), "blur": round(input_blur, 5)},
    }
    met = {
        "noise_monotonic": noise["monotonic"],
        "blur_monotonic": blur["monotonic"],
        "noise_calibrated": noise["calibrated"],
        "blur_calibrated": blur["calibrated"],
        "decoupled": decoupling["decoupled"],
        "blind": blind["met"],
    }
    return {
        "format": CONTROL_FORMAT,
        "setting": asdict(setting),
        "crops": n,
        "crop_size": list(inputs.clean.shape[-2:]),
        "noise_ladder": noise,
        "blur_ladder": blur,
        "decoupling": decoupling,
        "blind": blind,
        "reference": reference,
        "targets": dict(TARGETS),
        "met": met,
        "_outputs": {"noise": noise_outputs, "blur": blur_outputs, "blind": restored, "inputs": inputs},
    }


def strip_outputs(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without its tensors (``_outputs``), for JSON."""
    return {k: v for k, v in result.items() if k != "_outputs"}


class OracleRestorer:
    """The exact answer for every prompt: the graded target of ``spire_core.degradation.degrade_graded`` for the
    request the prompt parses to, from the clean crops and the parameters that degraded them (blind: the clean
    crop). It validates the benchmark end to end: its ladders follow the ideal curves up to the estimators' error.

    Args:
        inputs: the ``ControlInputs`` of the run (``control_inputs`` with the same clean crops and setting).
    """

    def __init__(self, inputs: ControlInputs) -> None:
        self.inputs = inputs
        self.clean = inputs.clean

    def __call__(self, degraded: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if not torch.equal(self.inputs.ladder, degraded.cpu()):
            raise ValueError("OracleRestorer: these images are not the benchmark's degraded crops")
        params = self.inputs.ladder_params
        requests = [parse(p) for p in prompts]
        if all(r.blind for r in requests):
            return self.clean.clone()
        return degrade_graded(self.clean, params, requests).target


def photo_crops(paths: Sequence[str | Path], crop: int, count: int | None = None) -> torch.Tensor:
    """Non-overlapping ``crop``-pixel crops tiling each photo, (N, 3, crop, crop) float in [0, 1]; ``count`` of them
    spread evenly over all crops (``None``: all)."""
    from ..imageio import load_image

    tiles = []
    for path in paths:
        photo = load_image(path)[0]
        height, width = photo.shape[1:]
        if height < crop or width < crop:
            raise ValueError(f"control: {path} is {width}x{height} px, smaller than the {crop} px crops")
        for y in range(0, height - crop + 1, crop):
            for x in range(0, width - crop + 1, crop):
                tiles.append(photo[:, y : y + crop, x : x + crop])
    crops = torch.stack(tiles)
    if count is not None and count < len(crops):
        crops = crops[torch.linspace(0, len(crops) - 1, count).round().long()]
    return crops


def write_control_report(results: Mapping[str, Mapping[str, Any]], folder: str | Path, **extra: Any) -> list[Path]:
    """Write ``control.json`` (every result without tensors, plus ``extra``), ``control.md`` and the ladder plots."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = {**extra, "results": {name: strip_outputs(result) for name, result in results.items()}}
    json_path = folder / "control.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path = folder / "control.md"
    md_path.write_text(control_markdown(results), encoding="utf-8")
    return [json_path, md_path, *plot_ladders(results, folder)]


def identity_restorer(degraded: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """A restorer that restores nothing (the degraded input): the benchmark's floor."""
    return degraded.clone()


def control_markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown tables of one or more restorers' results (name -> ``run_control`` result)."""
    first = next(iter(results.values()))
    setting = first["setting"]
    lines = [
        f"Control benchmark: {first['crops']} crops of {first['crop_size'][0]}x{first['crop_size'][1]} px, blurred "
        f"(Gaussian sigma {setting['blur']} px) then noisy (Gaussian sigma {setting['noise']}), seed "
        f"{setting['seed']}. Estimators on the clean crops: noise {first['reference']['clean']['noise']:.4f}, blur "
        f"{first['reference']['clean']['blur']:.2f} px; on the degraded input: noise "
        f"{first['reference']['degraded']['noise']:.4f}, blur {first['reference']['degraded']['blur']:.2f} px.",
        "",
    ]
    for kind, unit in (("noise", ""), ("blur", " px")):
        ladder = first[f"{kind}_ladder"]
        head = " | ".join(f"{p['named']:g}" for p in ladder["points"])
        lines += [
            f"**{kind.capitalize()} ladder** (present {ladder['present']:g}{unit}; the other degradation named in "
            f"full). Residual {kind} measured (mean over crops) per named level; ideal sqrt(present^2 - named^2).",
            "",
            f"| restorer | {head} | Spearman | max error (tolerance) |",
            "|---|" + "---:|" * len(ladder["points"]) + "---:|---:|",
            "| ideal | " + " | ".join(f"{p['ideal']:.4g}" for p in ladder["points"]) + " | -1 | |",
        ]
        for name, result in results.items():
            entry = result[f"{kind}_ladder"]
            values = " | ".join(f"{p['measured']:.4g}" for p in entry["points"])
            error = f"{entry['max_calibration_error']:.4g} ({entry['calibration_tolerance']:.4g})"
            lines.append(f"| {name} | {values} | {entry['spearman']:+.2f} | {error} |")
        lines += [
            "",
            f"Per crop: the share of crops whose residual {kind} lies within the tolerance of the ideal, and the "
            "median with the quartiles, per named level.",
            "",
            f"| restorer | {head} |",
            "|---|" + "---:|" * len(ladder["points"]),
        ]
        for name, result in results.items():
            points = result[f"{kind}_ladder"]["points"]
            cells = " | ".join(
                f"{p['crops_within_tolerance']:.0%}: {p['quartiles'][1]:.3g} ({p['quartiles'][0]:.3g}-"
                f"{p['quartiles'][2]:.3g})"
                for p in points
            )
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    lines += [
        "**Decoupling and blind restoration**",
        "",
        "| restorer | Deblur only: noise kept | Denoise only: blur kept | blind PSNR in -> out (dB) | gain |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        d, b = result["decoupling"], result["blind"]
        lines.append(
            f"| {name} | {d['deblur_only']['kept']:.0%} | {d['denoise_only']['kept']:.0%} | "
            f"{b['psnr_degraded_db']:.2f} -> {b['psnr_restored_db']:.2f} | {b['gain_db']:+.2f} |"
        )
    lines += ["", "**Targets met** (monotonic: Spearman -1; calibrated: every point within tolerance; decoupled: "]
    lines[-1] += "at least 70 % kept; blind: at least +2 dB)"
    lines += ["", "| restorer | " + " | ".join(first["met"]) + " |", "|---|" + "---|" * len(first["met"])]
    for name, result in results.items():
        lines.append(f"| {name} | " + " | ".join("yes" if v else "no" for v in result["met"].values()) + " |")
    return "\n".join(lines) + "\n"


def plot_ladders(results: Mapping[str, Mapping[str, Any]], folder: str | Path) -> list[Path]:
    """``ladder_noise.png`` and ``ladder_blur.png``: measured residual against the named level for each restorer,
    with the ideal curve and the calibration band."""
    from matplotlib.figure import Figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    first = next(iter(results.values()))
    for kind, unit in (("noise", "noise sigma ([0, 1])"), ("blur", "blur sigma (px)")):
        ladder = first[f"{kind}_ladder"]
        named = [p["named"] for p in ladder["points"]]
        ideal = [p["ideal"] for p in ladder["points"]]
        tolerance = ladder["calibration_tolerance"]
        figure = Figure(figsize=(5.2, 4.0), layout="constrained")
        axis = figure.subplots()
        dense = [ladder["present"] * i / 50 for i in range(51)]
        axis.plot(dense, [ideal_residual(ladder["present"], x) for x in dense], "k-", label="ideal")
        axis.fill_between(
            dense,
            [max(0.0, ideal_residual(ladder["present"], x) - tolerance) for x in dense],
            [ideal_residual(ladder["present"], x) + tolerance for x in dense],
            color="0.85",
            label="target band",
        )
        for name, result in results.items():
            points = result[f"{kind}_ladder"]["points"]
            axis.plot(named, [p["measured"] for p in points], "o-", label=name)
        axis.plot(named, ideal, "k.")
        axis.set_xlabel(f"named {unit}")
        axis.set_ylabel(f"residual {unit}, measured")
        axis.set_title(f"{kind} ladder (present {ladder['present']:g})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        path = folder / f"ladder_{kind}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


__all__ = [
    "CONTROL_FORMAT",
    "TARGETS",
    "ControlInputs",
    "ControlSetting",
    "OracleRestorer",
    "Restorer",
    "control_inputs",
    "control_markdown",
    "identity_restorer",
    "labels_are_distinct",
    "photo_crops",
    "ladder_requests",
    "plot_ladders",
    "run_control",
    "run_label",
    "spearman",
    "strip_outputs",
    "variant_name",
    "write_control_report",
]
