"""Per-dimension standardisation of embeddings with training statistics, guarded against near-constant
dimensions: one rule for the denoiser's condition and the baselines' features.

A dimension that hardly varies over the training rows (a colour bin no training image fills, say) carries
nothing a model can learn from; dividing by its tiny spread turns any test image that has that colour into
values around 1e5. Such a dimension gets an infinite spread (it standardises to 0), and every standardised
value is clipped at CLIP_SIGMAS.
"""

from __future__ import annotations

import numpy as np
import torch

NEAR_CONSTANT = 1e-3  # a spread below this share of the median spread counts as constant
CLIP_SIGMAS = 10.0


def guarded_spread(std: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The spread to divide by: `std`, with near-constant dimensions set to infinity."""
    if isinstance(std, torch.Tensor):
        positive = std[std > 0]
        floor = NEAR_CONSTANT * (positive.median() if positive.numel() else torch.tensor(1.0, dtype=std.dtype))
        return torch.where(std > floor, std, torch.full_like(std, torch.inf))
    std = np.asarray(std)
    positive = std[std > 0]
    floor = NEAR_CONSTANT * (np.median(positive) if positive.size else 1.0)
    return np.where(std > floor, std, np.inf).astype(std.dtype)


def standardised(values, mean, spread):
    """(values - mean) / spread, clipped at +-CLIP_SIGMAS (numpy arrays or torch tensors alike)."""
    z = (values - mean) / spread
    return z.clamp(-CLIP_SIGMAS, CLIP_SIGMAS) if isinstance(z, torch.Tensor) else np.clip(z, -CLIP_SIGMAS, CLIP_SIGMAS)
