"""A seamless, grain-carrying linear "VAE" for the miniature (``LappedGrainCodec``), fitted in seconds on CPU.

Same interface and latent shape (4 channels at 1/8 of the image size) as ``PatchPCACodec`` (below, the block codec
it replaces), built for experiments whose outputs must keep a chosen amount of noise or blur. ``PatchPCACodec``
decodes each 8x8 block on its own (visible seams: the mean step across block boundaries is 4x the step inside)
and its 4-component projection keeps only ~8% of an input's noise, so no output of the stack could keep part of
the noise.

- **Content (channels 0-2)**: lapped analysis. Each latent cell sees the 16x16 window centred on its 8x8 cell
  (stride 8, reflect-padded by 4 px) weighted by the sine window ``w(n) = sin(pi (n + 0.5) / 16)``
  (``w(n)^2 + w(n + 8)^2 = 1``); three linear functionals of it, started from its principal directions and
  refined by alternating least squares, whitened. Overlapping windows make the codes vary smoothly with
  position, so a Gaussian blur of the input shows as a blur of the decoded image.
- **Synthesis**: a transposed convolution (24x24 kernels, stride 8: each code paints its cell and the eight
  around it, plus a constant "bias" code) fitted by least squares. Unconstrained, least-squares kernels jump
  at cell boundaries (seams again, 1.6x); a penalty on their second differences across those boundaries and
  at their edges (zero outside) removes the seams for ~0.1 dB.
- **Noise level (channel 3)**: ``log`` of a robust per-cell noise sigma (``noise_sigma``: median absolute
  response of Immerkaer's 3x3 mask, blind to shading and straight edges, over the cell's window and three
  colours). The decoder adds a fixed unit-Gaussian grain field (seeded, per pixel and colour, anchored at the
  top-left corner, independent of the input) times the bilinearly upsampled sigma, drawn larger near black and
  white so that, after the final clamp to [0, 1], it has the (clipped) level that was encoded.

Measured on the 28 held-out 64 px crops (fit on 1024 training crops, 5-6.5 s on one busy thread): round trip
27.4 dB (27.9 dB without the grain; ``PatchPCACodec`` 27.7 dB); the mean step across cell boundaries is 1.02-1.03x
the step inside cells (the photos themselves: 1.02-1.07x; ``PatchPCACodec``: 4.2-4.5x). Added Gaussian noise of
sigma 0.02-0.25 on a 2 px-blurred crop comes back at 0.99-1.02x its sigma (``eval.estimators.residual_noise``
and a flat-half high-pass std alike). Blur: the Gaussian sigma that maps the grain-free decode of a clean crop
onto the decode of its s-px blur is 0.8, 1.9, 2.9, 3.9 px for s = 1-4 (0.9-4.2 px under noise 0.05); against
the clean crop, ``eval.estimators.residual_blur_sigma`` reads 2.2 px for the codec alone and 2.3, 2.7, 3.4, 4.1
px after a blur of 1-4 px (``PatchPCACodec``: 2.0 and 2.3-4.3): a 1 px blur is barely representable in 3 linear
codes per 8x8 cell. On clean crops the grain reproduces the photos' own fine noise (median 0.006 per cell) and
stands in for part of the texture the codes cannot hold (0.03-0.06 on the most textured tenth of the cells).

Caveats: the grain is the same for every image of a size, so the difference of two decodes holds the difference
of their noise levels (not the root-sum-square) and a decode correlates with another's grain: fit a blur against
a grain-free reference (``decode(z, grain=False)``) or the clean image. Grey (luma-only) or spatially correlated
noise comes back as white colour grain of the same level.

The decoder is a deterministic function of the latent. ``LappedGrainCodec.fit(images, grain=False)`` gives the
4-content-channel variant without the noise channel (29.4 dB, no noise pass-through).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

CELL = 8
"""Latent cell size in pixels (Stable Diffusion's downscale)."""
WINDOW = 16
"""Lapped analysis window (two cells), centred on its cell."""
SUPPORT = 24
"""Synthesis kernel size: each code paints its own cell and its eight neighbours."""
GRAIN_TILE = 256
"""Side of the periodic grain tile (the grain repeats every 256 px)."""
_IMMERKAER = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
_IMMERKAER_GAIN = 6.0  # std of the mask's response to unit i.i.d. noise
_MAD_TO_SIGMA = 0.6744897501960817  # median of |N(0, 1)|
_SQRT_2PI = math.sqrt(2 * math.pi)


@dataclass(frozen=True)
class CodecConfig:
    """The ``AutoencoderKL`` config fields ``spire_core.training`` reads: 4 latent channels, four "levels"
    (``vae_downscale = 2**3 = 8``) and the latent scaling factor."""

    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (192, 192, 192, 192)
    scaling_factor: float = 1.0


@dataclass
class Posterior:
    """A deterministic "posterior": ``mean`` is the code, ``std`` is zero (so training samples are exact)."""

    mean: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class Encoded:
    latent_dist: Posterior


@dataclass
class Decoded:
    sample: torch.Tensor


@dataclass
class CodecStats:
    """What ``fit`` measured on (up to 128 of) its images: the pixel variance the grain-free round trip explains,
    the round-trip PSNR (dB, [0, 1] scale, grain included), the fit's wall time and the windows behind the
    encoder statistics; ``extra["pca_explained_variance"]``: windowed-patch variance of the starting PCA."""

    explained_variance: float
    fit_psnr: float
    fit_seconds: float
    fit_windows: int
    extra: dict[str, float] = field(default_factory=dict)


def sine_window(size: int = WINDOW) -> torch.Tensor:
    """(size, size) separable sine window; for size 16, ``w(n)^2 + w(n + 8)^2 = 1`` (Princen-Bradley)."""
    w = torch.sin(math.pi * (torch.arange(size, dtype=torch.float64) + 0.5) / size)
    return w[:, None] * w[None]


def lapped_windows(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/8 * W/8, C * 256): each cell's windowed 16x16 neighbourhood (reflect-padded 4 px)."""
    pad = (WINDOW - CELL) // 2
    patches = F.unfold(F.pad(x, (pad, pad, pad, pad), mode="reflect"), WINDOW, stride=CELL)
    return (patches * window.flatten().repeat(x.shape[1])[None, :, None].to(patches)).transpose(1, 2)


def noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Robust per-cell noise sigma of (B, 3, H, W) images, in the images' own units: (B, 1, H/8, W/8).

    Immerkaer's mask ``[1 -2 1] x [1 -2 1]`` is zero on any ``f(x) + g(y)`` (shading, straight edges) and has
    gain 6 on i.i.d. noise; the median of its absolute response over the cell's 16x16 window and all colours
    (768 values) is robust to diagonal edges and sparse texture covering less than half the window.
    """
    channels = x.shape[1]
    mask = torch.tensor(_IMMERKAER, dtype=x.dtype, device=x.device).view(1, 1, 3, 3).repeat(channels, 1, 1, 1)
    response = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), mask, groups=channels).abs()
    pad = (WINDOW - CELL) // 2
    values = F.unfold(F.pad(response, (pad, pad, pad, pad), mode="reflect"), WINDOW, stride=CELL)
    sigma = values.median(dim=1).values / (_MAD_TO_SIGMA * _IMMERKAER_GAIN)
    return sigma.view(x.shape[0], 1, x.shape[2] // CELL, x.shape[3] // CELL)


def clipped_std(mean: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """Standard deviation of ``clamp(mean + amplitude * N(0, 1), 0, 1)`` (censored normal), elementwise."""
    amplitude = amplitude.clamp_min(1e-8)
    low, high = -mean / amplitude, (1 - mean) / amplitude
    cdf_low, cdf_high = torch.special.ndtr(low), torch.special.ndtr(high)
    pdf_low, pdf_high = torch.exp(-0.5 * low**2) / _SQRT_2PI, torch.exp(-0.5 * high**2) / _SQRT_2PI
    first = low * cdf_low + (pdf_low - pdf_high) + high * (1 - cdf_high)
    second = low**2 * cdf_low + high**2 * (1 - cdf_high) + (cdf_high - cdf_low) + low * pdf_low - high * pdf_high
    return amplitude * (second - first**2).clamp_min(0).sqrt()


def unclipped_amplitude(mean: torch.Tensor, target: torch.Tensor, most: float = 4.0, steps: int = 14) -> torch.Tensor:
    """Amplitude ``a`` (at most ``most * target``) with ``clipped_std(mean, a) == target``, elementwise.

    The decoded grain is clipped to [0, 1] like the encoded noise was, so near black or white the decoder must
    draw it larger to reproduce the encoded (already clipped) noise level. Bisection in log space, only where
    ``mean`` is within ``4 * target`` of 0 or 1 (elsewhere clipping changes the std by < 1e-4: ``a = target``).
    """
    mean = mean.clamp(1e-3, 1 - 1e-3)
    amplitude = target.clone()
    near = torch.minimum(mean, 1 - mean) < 4 * target
    if not bool(near.any()):
        return amplitude
    mu, goal = mean[near], target[near]
    low, high = torch.zeros_like(goal), torch.full_like(goal, math.log(most))
    for _ in range(steps):
        middle = (low + high) / 2
        below = clipped_std(mu, goal * middle.exp()) < goal
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    amplitude[near] = goal * ((low + high) / 2).exp()
    return amplitude


def _neighbourhoods(codes: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B * h * w, K * 9): each cell's 3x3 code neighbourhood (replicate-padded), order (k, y, x)."""
    features = F.unfold(F.pad(codes, (1, 1, 1, 1), mode="replicate"), 3)
    return features.transpose(1, 2).reshape(-1, features.shape[1])


def _seam_penalty(dtype: torch.dtype) -> torch.Tensor:
    """(576, 576) quadratic form on a 24x24 kernel: squared second differences centred on both sides of the
    cell boundaries inside the kernel (8, 16) and at its edges (zero outside), along rows and columns."""
    rows = []
    for a in (-1, 0, CELL - 1, CELL, 2 * CELL - 1, 2 * CELL, SUPPORT - 1, SUPPORT):
        row = torch.zeros(SUPPORT + 4, dtype=dtype)
        row[a + 1 : a + 4] = torch.tensor([1.0, -2.0, 1.0], dtype=dtype)
        rows.append(row[2:-2])
    second = torch.stack(rows)
    line, eye = second.T @ second, torch.eye(SUPPORT, dtype=dtype)
    return torch.kron(line, eye) + torch.kron(eye, line)


def fit_synthesis(codes: torch.Tensor, images: torch.Tensor, smooth: float = 0.3) -> torch.Tensor:
    """Least-squares transposed-convolution kernels mapping codes to images, without seams.

    Args:
        codes: (N, K, h, w) codes of the images (a constant code is appended here).
        images: (N, 3, 8h, 8w) targets.
        smooth: weight of the seam penalty relative to the data term's mean diagonal.

    Returns:
        (K + 1, 3, 24, 24) kernels for ``synthesise`` (the last one belongs to the constant code).
    """
    dtype = torch.float64
    codes = torch.cat([codes.to(dtype), torch.ones_like(codes[:, :1], dtype=dtype)], 1)
    k1, size = codes.shape[1], SUPPORT * SUPPORT
    features = _neighbourhoods(codes)
    gram = features.T @ features
    targets = F.pixel_unshuffle(images.to(dtype), CELL).flatten(2).transpose(1, 2).reshape(-1, 3, CELL, CELL)
    cross = torch.einsum("nf,ncuv->fcuv", features, targets)
    normal = torch.zeros(k1 * size, k1 * size, dtype=dtype)
    rhs = torch.zeros(k1 * size, 3, dtype=dtype)
    k = torch.arange(k1)[:, None, None]
    offset = torch.arange(3)
    for u in range(CELL):
        for v in range(CELL):
            # the code of neighbour (oy - 1, ox - 1) paints this pixel with kernel entry (u + 16 - 8 oy, v + 16 - 8 ox)
            rows = u + 2 * CELL - CELL * offset[None, :, None]
            cols = v + 2 * CELL - CELL * offset[None, None, :]
            index = (k * size + rows * SUPPORT + cols).reshape(-1)
            normal[index[:, None], index[None, :]] += gram
            rhs[index] += cross[:, :, u, v]
    scale = float(gram.diagonal().mean()) * CELL * CELL
    normal += smooth * scale * torch.kron(torch.eye(k1, dtype=dtype), _seam_penalty(dtype))
    normal += 1e-8 * scale * torch.eye(k1 * size, dtype=dtype)
    kernels = torch.linalg.solve(normal, rhs)
    return kernels.T.reshape(3, k1, SUPPORT, SUPPORT).transpose(0, 1).contiguous()


def synthesise(codes: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) codes -> (B, 3, 8h, 8w) with the (K + 1, 3, 24, 24) kernels of ``fit_synthesis``."""
    codes = torch.cat([codes, torch.ones_like(codes[:, :1])], 1).to(kernels.dtype)
    out = F.conv_transpose2d(F.pad(codes, (1, 1, 1, 1), mode="replicate"), kernels, stride=CELL)
    crop = 2 * CELL
    return out[..., crop:-crop, crop:-crop]


def _best_codes(kernels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N * h * w, K) codes whose ``synthesise`` reconstructs each (N, 3, 8h, 8w) image best (least squares)."""
    content = kernels.shape[0] - 1
    height, width = images.shape[2] // CELL, images.shape[3] // CELL
    count = content * height * width
    offset = synthesise(torch.zeros(1, content, height, width, dtype=kernels.dtype), kernels)
    units = torch.eye(count, dtype=kernels.dtype).view(count, content, height, width)
    matrix = (synthesise(units, kernels) - offset).reshape(count, -1).float()
    normal = (matrix @ matrix.T).double()
    normal += 1e-9 * float(normal.diagonal().mean()) * torch.eye(count, dtype=torch.float64)
    cross = (matrix @ (images.float() - offset.float()).reshape(len(images), -1).T).double()
    codes = torch.linalg.solve(normal, cross).float()
    return codes.T.reshape(len(images), content, height * width).transpose(1, 2).reshape(-1, content)


class LappedGrainCodec(nn.Module):
    """Seamless lapped-PCA "VAE" whose last latent channel carries the local noise level (see the module doc).

    ``encode(x).latent_dist.mean``: (B, 3, H, W) in [-1, 1] (H, W multiples of 8) -> (B, 4, H/8, W/8):
    channels ``0..K-1`` whitened content codes (zero mean, unit variance on the fit windows), with ``grain``
    the last channel ``(log(sigma + NOISE_FLOOR) - NOISE_CENTRE) / NOISE_SPREAD`` for the per-cell noise sigma
    in [0, 1] image units (-2.17 for a noise-free cell, 0.44 for sigma 0.05, 0.98 for 0.1, 1.70 for 0.25; on
    clean photo crops mean about -1, std about 0.7: not whitened, so that its values keep their meaning).
    ``decode(z).sample``: (B, 3, H, W), about [-1, 1], not clamped: the content synthesis plus, with ``grain``,
    ``2 * upsample(sigma) * grain_field``. Deterministic: the same latent always decodes to the same image.
    """

    NOISE_FLOOR = 0.002
    NOISE_CENTRE = math.log(0.03)
    NOISE_SPREAD = 1.25
    NOISE_MAX = 0.5

    def __init__(
        self,
        patch_mean: torch.Tensor,
        basis: torch.Tensor,
        scale: torch.Tensor,
        kernels: torch.Tensor,
        grain: bool = True,
        grain_seed: int = 0,
        stats: CodecStats | None = None,
    ) -> None:
        """
        Args:
            patch_mean: (3 * 256,) mean windowed patch.
            basis: (K, 3 * 256) content analysis vectors (K = 3 with ``grain``, else 4).
            scale: (K,) standard deviations of ``(patch - patch_mean) @ basis.T`` (codes are divided by them).
            kernels: (K + 1, 3, 24, 24) synthesis kernels (``fit_synthesis`` of whitened codes).
            grain: whether the last latent channel is the noise level.
            grain_seed: seed of the fixed grain field.
            stats: what ``fit`` measured (``None`` for a codec built by hand).
        """
        super().__init__()
        content = basis.shape[0]
        self.config = CodecConfig(latent_channels=content + int(grain))
        self.grain, self.grain_seed = grain, grain_seed
        self.register_buffer("window", sine_window().float())
        self.register_buffer("patch_mean", patch_mean.float())
        self.register_buffer("basis", basis.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("kernels", kernels.float())
        generator = torch.Generator().manual_seed(grain_seed)
        tile = torch.randn(3, GRAIN_TILE, GRAIN_TILE, generator=generator, dtype=torch.float64)
        tile = (tile - tile.mean((1, 2), keepdim=True)) / tile.std(dim=(1, 2), keepdim=True)
        self.register_buffer("grain_tile", tile.float(), persistent=False)
        self.stats = stats
        self.explained_variance = stats.explained_variance if stats else float("nan")

    @classmethod
    def fit(
        cls,
        images: torch.Tensor,
        channels: int = 4,
        grain: bool = True,
        grain_seed: int = 0,
        refine: int = 4,
        smooth: float = 0.3,
        max_windows: int = 32768,
    ) -> LappedGrainCodec:
        """Fit on (N, 3, H, W) clean images in [-1, 1] (H, W multiples of 8), on the CPU. About 5-6.5 s for 1024
        crops of 64 px on one thread (2 s with ``refine=0``).

        1. PCA of the windowed patches of at most ``max_windows // cells`` evenly spaced images (top-left tiles
           of at most 64x64 px): the content encoder's starting point;
        2. ``refine`` alternating least-squares rounds of a linear autoencoder: seam-free synthesis of the
           current codes (``fit_synthesis`` on those images), the codes from which that synthesis reconstructs
           the tiles best (exact least squares per tile), then the encoder as the ridge regression of those
           codes on the windowed patches, re-whitened. 27.1 -> 27.9 dB on held-out crops in 4 rounds (PCA
           analysis is not the best partner of a least-squares synthesis);
        3. the final synthesis, fitted on all images.

        Args:
            images: the fit images (the miniature's 1024 random 64 px training crops).
            channels: latent channels (4: Stable Diffusion's).
            grain: last channel = noise level (``channels - 1`` content codes); else all channels are content.
            grain_seed: seed of the fixed grain field.
            refine: alternating rounds (0: plain lapped PCA analysis).
            smooth: seam penalty of ``fit_synthesis``.
            max_windows: windows used for the encoder statistics.
        """
        started = time.perf_counter()
        content = channels - int(grain)
        window = sine_window().float()
        images = images.detach().float().cpu()
        tile_h, tile_w = min(images.shape[2], 64), min(images.shape[3], 64)
        cells = (tile_h // CELL) * (tile_w // CELL)
        chosen = torch.linspace(0, len(images) - 1, max(1, min(len(images), max_windows // cells))).round().long()
        tiles = images[chosen, :, :tile_h, :tile_w]
        patches = lapped_windows(tiles, window).reshape(-1, 3 * WINDOW * WINDOW)
        mean = patches.double().mean(0).float()
        centred = patches - mean
        gram = (centred.T @ centred).double()
        variance, vectors = torch.linalg.eigh(gram / (len(centred) - 1))
        variance, vectors = variance.flip(0), vectors.flip(1)
        basis, scale = vectors[:, :content].T.float().contiguous(), variance[:content].clamp_min(1e-12).sqrt().float()
        pca_explained = float(variance[:content].sum() / variance.sum())
        ridge = 1e-6 * float(gram.diagonal().mean()) * torch.eye(gram.shape[0], dtype=torch.float64)
        subset = images[chosen]
        for _ in range(refine):
            kernels = fit_synthesis(cls._content_codes(subset, window, mean, basis, scale), subset, smooth)
            target = _best_codes(kernels, tiles)
            cross = (centred.T @ (target - target.mean(0))).double()
            weights = torch.linalg.solve(gram + ridge, cross).float()
            scale = (centred @ weights).std(dim=0).clamp_min(1e-12)
            basis = weights.T.contiguous()
        kernels = fit_synthesis(cls._content_codes(images, window, mean, basis, scale), images, smooth)
        extra = {"pca_explained_variance": pca_explained}
        stats = CodecStats(float("nan"), float("nan"), 0.0, int(len(patches)), extra)
        codec = cls(mean, basis, scale, kernels, grain=grain, grain_seed=grain_seed, stats=stats)
        with torch.no_grad():
            probe = images[torch.linspace(0, len(images) - 1, min(len(images), 128)).round().long()]
            latents = codec.encode(probe).latent_dist.mean
            plain = codec.decode(latents, grain=False).sample
            stats.explained_variance = float(1 - (plain - probe).pow(2).mean() / probe.var())
            decoded = ((codec.decode(latents).sample + 1) / 2).clamp(0, 1)
            error = (decoded - (probe + 1) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-12)
            stats.fit_psnr = float((10 * torch.log10(1 / error)).mean())
        codec.explained_variance = stats.explained_variance
        stats.fit_seconds = time.perf_counter() - started
        return codec

    @staticmethod
    def _content_codes(
        x: torch.Tensor, window: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, H/8, W/8): ``(windowed patch - mean) @ basis.T / scale``, as one strided conv."""
        dtype = x.dtype
        weight = basis.to(dtype) * window.to(dtype).flatten().repeat(3) / scale.to(dtype)[:, None]
        bias = -(mean.to(dtype) @ basis.to(dtype).T) / scale.to(dtype)
        pad = (WINDOW - CELL) // 2
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(padded, weight.view(-1, 3, WINDOW, WINDOW), bias, stride=CELL)

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    def noise_code(self, sigma: torch.Tensor) -> torch.Tensor:
        """Noise sigma in [0, 1] image units -> latent value of the noise channel."""
        return (torch.log(sigma.clamp_min(0) + self.NOISE_FLOOR) - self.NOISE_CENTRE) / self.NOISE_SPREAD

    def noise_level(self, code: torch.Tensor) -> torch.Tensor:
        """Latent value of the noise channel -> noise sigma in [0, 1] image units, clamped to [0, NOISE_MAX]."""
        sigma = torch.exp(code.clamp(max=10.0) * self.NOISE_SPREAD + self.NOISE_CENTRE) - self.NOISE_FLOOR
        return sigma.clamp(0.0, self.NOISE_MAX)

    def grain_field(self, height: int, width: int) -> torch.Tensor:
        """(3, height, width) fixed unit-Gaussian grain, anchored at the top-left corner (periodic, 256 px)."""
        tile = self.grain_tile
        reps = (1, -(-height // GRAIN_TILE), -(-width // GRAIN_TILE))
        return tile.repeat(*reps)[:, :height, :width]

    def encode(self, x: torch.Tensor) -> Encoded:
        x = x.float()
        codes = self._content_codes(x, self.window, self.patch_mean, self.basis, self.scale)
        if self.grain:
            codes = torch.cat([codes, self.noise_code(noise_sigma(x) / 2)], 1)
        return Encoded(Posterior(codes.contiguous()))

    def decode(self, z: torch.Tensor, grain: bool = True) -> Decoded:
        """(B, 4, h, w) latents -> ``Decoded(sample)``, (B, 3, 8h, 8w) about [-1, 1]; ``grain=False`` leaves the
        grain out (a grain-free reference, e.g. to fit the blur of another decode without the shared grain)."""
        z = z.float()
        content = self.basis.shape[0]
        images = synthesise(z[:, :content], self.kernels)
        if self.grain and grain:
            sigma = F.interpolate(self.noise_level(z[:, content:]), scale_factor=CELL, mode="bilinear")
            amplitude = unclipped_amplitude(((images + 1) / 2).detach(), sigma.expand_as(images))
            images = images + 2 * amplitude * self.grain_field(images.shape[2], images.shape[3]).to(images)
        return Decoded(images)

    def roundtrip(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] through the codec and back, clamped to [0, 1]."""
        return ((self.decode(self.encode(images * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)


class PatchPCACodec(nn.Module):
    """A fixed linear "VAE" with Stable Diffusion's latent shape: 8x8 space-to-depth (192 values per patch),
    the top-4 principal directions of training patches, each whitened to unit variance.

    ``encode(x).latent_dist.mean``: (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8), zero mean and unit variance per
    channel on the training patches. ``decode(z).sample`` is the exact inverse on the codec's range (an
    orthogonal projection onto 4 patch components per 8x8 block), so ``decode(encode(x))`` is the best
    4-component linear reconstruction of each block.
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor, explained: float) -> None:
        super().__init__()
        self.config = CodecConfig(latent_channels=basis.shape[0])
        self.register_buffer("patch_mean", mean.float())
        self.register_buffer("basis", basis.float())
        self.register_buffer("scale", scale.float())
        self.explained_variance = explained

    @classmethod
    def fit(cls, images: torch.Tensor, channels: int = 4) -> PatchPCACodec:
        """Fit on (N, 3, H, W) images in [-1, 1] (H, W multiples of 8)."""
        patches = F.pixel_unshuffle(images.double(), 8).permute(0, 2, 3, 1).reshape(-1, 3 * 64)
        mean = patches.mean(0)
        _, singular, vh = torch.linalg.svd(patches - mean, full_matrices=False)
        variance = singular.pow(2) / (patches.shape[0] - 1)
        explained = float(variance[:channels].sum() / variance.sum())
        return cls(mean, vh[:channels], variance[:channels].sqrt(), explained)

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    def encode(self, x: torch.Tensor) -> Encoded:
        patches = F.pixel_unshuffle(x.float(), 8).permute(0, 2, 3, 1)
        codes = (patches - self.patch_mean) @ self.basis.T / self.scale
        return Encoded(Posterior(codes.permute(0, 3, 1, 2).contiguous()))

    def decode(self, z: torch.Tensor) -> Decoded:
        codes = z.float().permute(0, 2, 3, 1) * self.scale
        patches = codes @ self.basis + self.patch_mean
        return Decoded(F.pixel_shuffle(patches.permute(0, 3, 1, 2).contiguous(), 8))

    def roundtrip(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] through the codec and back, clamped to [0, 1]."""
        return ((self.decode(self.encode(images * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
