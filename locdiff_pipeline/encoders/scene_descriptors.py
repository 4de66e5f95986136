"""Classical scene descriptors: an image encoder that sees without learned weights.

Before CLIP, photographs were geolocated with hand-made scene features (Hays & Efros, "IM2GPS", 2008):
what colours a scene holds, where they sit in the frame, and the texture of its structure at several
scales and orientations (Oliva & Torralba's GIST, 2001). They need no weights, so they are the encoder
of the bundled default run, where no pretrained CLIP can be had. Three blocks, from a square
`image_px` resampling of the image:

1. colour histogram: CIE Lab (a perceptual space: equal steps look about equally different), bins
   `lab_bins` over fixed ranges, each pixel spread over its neighbouring bins (trilinear), so a small
   colour change moves the histogram a little, never a whole count; square-rooted (Hellinger), so a
   few dominant colours do not drown the rest;
2. colour layout: the mean and the spread (standard deviation) of the Lab colour in each cell of a
   `layout_grid` x `layout_grid` grid;
3. GIST: the grey image is log-compressed, whitened and contrast-normalised (Oliva & Torralba's
   prefilter), then filtered by `gist_scales` x `gist_orientations` Gabor-like transfer functions in the
   frequency domain; the magnitude of each response is averaged over a `gist_grid` grid.

The blocks are concatenated as they are and the vector made unit-norm, as a CLIP embedding is. Nothing is
fitted here: the statistics that standardise the features are the consumers' (the denoiser and the
baselines fit them on training rows). Everything is batched torch (FFT, pooling, scatter), the same code
on the CPU and a GPU.

The shape was chosen by leave-one-block-out retrieval on the bundled training windows (each 15-degree
block predicted from the others; training data only), docs/results.md: 8 x 8 x 8 colour bins, colour
spread beside the mean, and GIST pooled on 2 x 2 cells placed 11.5 % of windows within 750 km and 30.6 %
within 2,500 km there, against 8.3 % / 24.5 % for Im2GPS's 4 x 6 x 6 bins, means only and a 4 x 4 GIST
grid (chance 1.8 % / 17.8 %); scaling each block to unit norm first lost a third of that.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

DESCRIPTOR_VERSION = 1  # bump when what `describe` computes changes: it names the encoder and every cache key
# Lab ranges binned by the colour histogram (values outside are clamped into the edge bins)
LAB_RANGES = ((0.0, 100.0), (-60.0, 60.0), (-60.0, 60.0))
GIST_PEAK_FREQUENCY = 0.3  # cycles per pixel of the finest scale (Oliva & Torralba)
GIST_SCALE_STEP = 1.85  # each coarser scale's peak frequency is this many times lower
PREFILTER_CUTOFF = 4.0  # cycles per image of the whitening high-pass (Oliva & Torralba's fc = 4)


@dataclass(frozen=True)
class DescriptorSpec:
    """The descriptor's shape. Changing any field changes the encoder's identity (and every cache key)."""

    image_px: int = 64
    lab_bins: tuple[int, int, int] = (8, 8, 8)
    layout_grid: int = 4
    gist_scales: int = 4
    gist_orientations: int = 6
    gist_grid: int = 2

    def __post_init__(self) -> None:
        for grid in (self.layout_grid, self.gist_grid):
            if grid < 1 or self.image_px % grid:
                raise ValueError(f"image_px={self.image_px} must be a multiple of each grid size, got {grid}")
        if min(self.lab_bins) < 1 or self.gist_scales < 1 or self.gist_orientations < 1:
            raise ValueError(f"descriptor sizes must be positive: {self}")
        object.__setattr__(self, "lab_bins", tuple(int(b) for b in self.lab_bins))

    @property
    def block_dims(self) -> dict[str, int]:
        return {
            "colour_histogram": math.prod(self.lab_bins),
            "colour_layout": 6 * self.layout_grid**2,
            "gist": self.gist_scales * self.gist_orientations * self.gist_grid**2,
        }

    @property
    def dim(self) -> int:
        return sum(self.block_dims.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "lab_bins": list(self.lab_bins)}


def describe(pixels: torch.Tensor, spec: DescriptorSpec = DescriptorSpec()) -> torch.Tensor:
    """Unit-norm descriptors (N, spec.dim) of sRGB images (N, 3, image_px, image_px) with values in [0, 1]."""
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2:] != (spec.image_px, spec.image_px):
        raise ValueError(f"pixels must be (N, 3, {spec.image_px}, {spec.image_px}), got {tuple(pixels.shape)}")
    rgb = pixels.to(torch.float32).clamp(0.0, 1.0)
    lab = rgb_to_lab(rgb)
    blocks = [colour_histogram(lab, spec.lab_bins), colour_layout(lab, spec.layout_grid), gist(rgb, spec)]
    return F.normalize(torch.cat(blocks, dim=1), dim=1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) of sRGB pixels (kornia's conversion): L in [0, 100], a and b about [-100, 100]."""
    from kornia.color import rgb_to_lab as kornia_rgb_to_lab

    return kornia_rgb_to_lab(rgb)


def colour_histogram(lab: torch.Tensor, bins: tuple[int, int, int]) -> torch.Tensor:
    """(N, prod(bins)) square-rooted share of pixels per Lab bin, each pixel split trilinearly between the
    centres of its neighbouring bins."""
    n = lab.shape[0]
    lows, highs, counts = [], [], []
    for channel, (count, (low, high)) in enumerate(zip(bins, LAB_RANGES)):
        # continuous bin coordinate: 0 at the first bin's centre, count - 1 at the last one's
        position = ((lab[:, channel] - low) / (high - low) * count - 0.5).clamp(0.0, count - 1).reshape(n, -1)
        low_bin = position.floor().clamp(max=max(count - 2, 0))
        upper_share = (position - low_bin).clamp(0.0, 1.0)
        lows.append(low_bin.long())
        highs.append((low_bin.long() + 1).clamp(max=count - 1))
        counts.append((1.0 - upper_share, upper_share))
    histogram = torch.zeros(n, math.prod(bins), device=lab.device, dtype=lab.dtype)
    strides = (bins[1] * bins[2], bins[2], 1)
    for corner in range(8):
        index, weight = 0, 1.0
        for channel in range(3):
            upper = (corner >> channel) & 1
            index = index + (highs[channel] if upper else lows[channel]) * strides[channel]
            weight = weight * counts[channel][upper]
        histogram.scatter_add_(1, index, weight)
    return (histogram / histogram.sum(dim=1, keepdim=True)).sqrt()


def colour_layout(lab: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, 6 * grid^2) mean and standard deviation of the Lab colour in each grid cell, in units of 100
    (L spans 0-100, a and b about -100 to 100, so the channels weigh alike)."""
    scaled = lab / 100.0
    mean = F.adaptive_avg_pool2d(scaled, grid)
    deviation = scaled - F.interpolate(mean, size=scaled.shape[-2:], mode="nearest")  # cells tile the image
    spread = F.adaptive_avg_pool2d(deviation**2, grid).sqrt()  # about the mean: no E[x^2] - E[x]^2 cancellation
    return torch.cat([mean.flatten(1), spread.flatten(1)], dim=1)


def gist(rgb: torch.Tensor, spec: DescriptorSpec, chunk: int = 64) -> torch.Tensor:
    """(N, scales * orientations * grid^2) GIST: oriented band-pass energy of the prefiltered grey image,
    averaged over a grid. Images go through the filter bank `chunk` at a time, which bounds the memory of
    the (chunk, filters, size, size) complex responses."""
    grey = 255.0 * (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    padding = spec.image_px // 8  # symmetric padding keeps the FFT's wrap-around off the borders (O&T: 32 of 256)
    size = spec.image_px + 2 * padding
    padded = F.pad(prefilter(grey, padding)[:, None], (padding,) * 4, mode="reflect")[:, 0]
    transfer = gabor_bank(size, spec.gist_scales, spec.gist_orientations, str(rgb.device))
    pooled = []
    for start in range(0, padded.shape[0], chunk):
        spectrum = torch.fft.fft2(padded[start : start + chunk])  # (n, size, size)
        responses = torch.fft.ifft2(spectrum[:, None] * transfer[None]).abs()  # (n, filters, size, size)
        inner = responses[:, :, padding : padding + spec.image_px, padding : padding + spec.image_px]
        pooled.append(F.adaptive_avg_pool2d(inner, spec.gist_grid).flatten(1))
    return torch.cat(pooled)


def prefilter(grey: torch.Tensor, padding: int) -> torch.Tensor:
    """Oliva & Torralba's prefilter of grey images (N, H, W) in [0, 255]: log compression, whitening by a
    Gaussian high-pass, local contrast normalisation (so GIST sees structure, not illumination)."""
    image = torch.log1p(grey)
    padded = F.pad(image[:, None], (padding,) * 4, mode="reflect")[:, 0]
    size = padded.shape[-1]
    lowpass = gaussian_transfer(size, PREFILTER_CUTOFF, str(grey.device))
    whitened = padded - torch.fft.ifft2(torch.fft.fft2(padded) * lowpass).real
    local_energy = torch.fft.ifft2(torch.fft.fft2(whitened**2) * lowpass).real.clamp(min=0.0).sqrt()
    normalised = whitened / (0.2 + local_energy)
    return normalised[:, padding:-padding, padding:-padding]


def _frequencies(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(radius in cycles per pixel, angle) of every FFT bin of a size x size image."""
    axis = torch.fft.fftfreq(size, device=device, dtype=torch.float64)
    fy, fx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.sqrt(fx**2 + fy**2), torch.atan2(fy, fx)


@functools.lru_cache(maxsize=16)
def gaussian_transfer(size: int, cutoff_cycles: float, device: str) -> torch.Tensor:
    """A Gaussian low-pass transfer function with width `cutoff_cycles` cycles per image."""
    radius, _ = _frequencies(size, device)
    sigma = cutoff_cycles / math.sqrt(math.log(2.0)) / size
    return torch.exp(-((radius / sigma) ** 2)).to(torch.float32)


@functools.lru_cache(maxsize=16)
def gabor_bank(size: int, scales: int, orientations: int, device: str) -> torch.Tensor:
    """(scales * orientations, size, size) one-sided Gabor transfer functions (Oliva & Torralba's
    createGabor): a Gaussian in log-radius-like frequency around each scale's peak, times a Gaussian in
    angle around each orientation; one-sided, so each response's magnitude is its local energy."""
    radius, angle = _frequencies(size, device)
    filters = []
    for scale in range(scales):
        peak = GIST_PEAK_FREQUENCY / GIST_SCALE_STEP**scale
        for orientation in range(orientations):
            centre = math.pi * orientation / orientations
            offset = torch.remainder(angle - centre + math.pi, 2 * math.pi) - math.pi
            angular_width = 16.0 * orientations**2 / 32.0**2
            filters.append(
                torch.exp(-10.0 * 0.35 * (radius / peak - 1.0) ** 2 - 2.0 * angular_width * math.pi * offset**2)
            )
    return torch.stack(filters).to(torch.float32)
