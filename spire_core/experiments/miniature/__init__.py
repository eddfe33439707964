"""The miniature control check: does the restoration prompt steer what is removed and how much, on a CPU?

    python -m spire_core.experiments.miniature --out runs/miniature [--budget-minutes 30] [--seed 0]

The whole SPIRE recipe at toy scale, in one process on the two bundled sample photos (``docs/samples``):

1. **Codec** (the stack's "VAE", ``minicodec.LappedGrainCodec``): seam-free lapped analysis and synthesis with
   Stable Diffusion's latent shape (4 channels at 1/8 of the image size, so the adaptor's hint stays the 8x larger
   RGB image): three content channels and one channel holding the local noise level, from which the decoder
   re-synthesises grain (as SD's decoder re-synthesises texture). Outputs can therefore keep a chosen amount of
   noise and of blur, which a ladder must be able to show. The old block codec (``PatchPCACodec``: 8x8 blocks, 4
   components, visible seams, ~8 % of an input's noise kept) is fitted too, for its round-trip PSNR.
2. **Backbone**: the tiny SD1-shaped UNet (``tiny_unet_config``) trained on codec latents of 64 px crops, half of
   them clean and half degraded by the preset (as SD saw noisy and soft photos among its training images, so its
   prior covers the targets graded prompts ask for), empty semantic prompt, SD's noise schedule,
   **v-prediction**; its EMA weights are then frozen.
3. **Adaptors, three arms with equal budgets** (``RECIPE_ARMS`` by default), trained **interleaved on the same
   micro-batches** (steps, batch, learning rate, seed, degradations, prompts, noise and timesteps) with the
   trainer's own ``make_training_batch`` and ``diffusion_loss``: ``modulation_numeric`` (SPIRE's modulation and the
   numeric side channel, the default), ``modulation_clip`` (modulation, the prompt through CLIP alone) and
   ``additive_numeric`` (plain ControlNet residuals with the numeric channel); or, with ``TRUNK_ARMS`` on a wider
   backbone (``--backbone-width 64 --backbone-norm-groups 16``), the default recipe with a full, half and quarter
   trunk. Preset ``control``: isotropic Gaussian blur and Gaussian noise, each present 80 % of the time; the
   trainer's default ``PromptConfig`` draws full, partial, graded and blind samples (graded targets keep the
   residual of each named level, ``degradation.degrade_graded``).
4. **Evaluation** on crops of a held-out strip (the rightmost ``holdout`` columns of each photo, never cropped in
   training), restored by ``validation.restore`` (DDIM from pure noise, no guidance, EMA weights): PSNR with the
   full prompts of the preset, and the **control benchmark** (``spire_core.eval.control``: noise and blur
   ladders, decoupling, blind) for each arm, next to the exact graded targets passed through the codec (the best
   the stack could output) and the degraded input.

Phases stop at time deadlines (fractions of the budget) or step caps; the steps actually done are recorded.
Results: ``<out>/miniature.json``, ``<out>/miniature.md``, ``<out>/control.json``/``control.md`` with the ladder
plots, ``<out>/eval.png`` and ``<out>/ladder.png``; the trained weights in ``<out>/weights`` (``weights``), from
which ``--evaluate-from <out>`` (``evaluate_run``) evaluates the run again with other evaluation options, without
training. It is a miniature: two photos, a sub-million-parameter backbone and minutes of training; it checks that
the recipe can teach control and measures it, not what the paper's scale reaches.
"""

from .config import ARMS, DEFAULT_ARM, RECIPE_ARMS, TRUNK_ARMS, MiniatureConfig
from .data import PhotoCrops
from .run import evaluate_run, main, markdown, run_miniature
from .weights import MiniatureWeightsError, load_weights, save_weights

__all__ = [
    "ARMS",
    "DEFAULT_ARM",
    "RECIPE_ARMS",
    "TRUNK_ARMS",
    "MiniatureConfig",
    "MiniatureWeightsError",
    "PhotoCrops",
    "evaluate_run",
    "load_weights",
    "main",
    "markdown",
    "run_miniature",
    "save_weights",
]
