"""What the diffusion model generates: SHDD vectors (LocDiff) or raw unit vectors (the ablation).

Each space says how to build targets from coordinates, how to score a predicted clean vector against
the true one, and how to turn a generated vector back into (lat, lon). Vectors are scaled by `scale`
inside the diffusion so each coordinate has unit RMS, as DDPM's noise schedule assumes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from locdiff_pipeline.method import shdd, sphere
from locdiff_pipeline.method.config import LocDiffConfig


class SHDDSpace:
    """SHDD_L vectors, trained with the SHDD KL loss over anchors re-sampled every step (or MSE)."""

    def __init__(self, config: LocDiffConfig):
        self.L = config.L
        self.dim = shdd.num_coefficients(config.L)
        self.scale = math.sqrt(4.0 * math.pi)  # each SHDD coefficient has RMS 1/sqrt(4 pi) over the sphere
        self.config = config

    def targets(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return shdd.encode(lat, lon, self.L, dtype=np.float32)

    def targets_on(self, lat: np.ndarray, lon: np.ndarray, device: torch.device) -> torch.Tensor:
        """Float32 targets computed on `device` from coordinates already validated at ingest."""
        lat_t, lon_t = torch.as_tensor(lat, device=device), torch.as_tensor(lon, device=device)
        return shdd.encode_torch(lat_t, lon_t, self.L, validate=False, dtype=torch.float32)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """MSE on coefficients, or the SHDD KL over fresh random anchors plus mse_weight x MSE."""
        mse = torch.mean(((pred - target) * self.scale) ** 2)
        if self.config.loss == "mse":
            return mse
        units = torch.randn(self.config.anchors_per_step, 3, generator=generator, device=pred.device)
        anchors = shdd.encode_units_torch(torch.nn.functional.normalize(units, dim=-1), self.L).float()
        # in float32 even under CUDA autocast: the softmax over anchors of F / (tau * peak) needs the precision
        with torch.autocast(pred.device.type, enabled=False):
            kl = shdd.kl_loss(
                pred.float(),
                target.float(),
                anchors,
                self.config.tau,
                direction=self.config.kl_direction,
            )
        return kl + self.config.mse_weight * mse

    def decode(self, vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return shdd.decode(vectors.float(), self.L, rho=self.config.rho_km)


class XYZSpace:
    """Unit vectors in R^3 with MSE, decoded by normalising: the 'raw coordinates' baseline of the article."""

    dim = 3
    scale = math.sqrt(3.0)

    def __init__(self, config: LocDiffConfig):
        self.config = config

    def targets(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return sphere.to_unit(lat, lon).astype(np.float32)

    def targets_on(self, lat: np.ndarray, lon: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.as_tensor(self.targets(lat, lon), device=device)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.mean(((pred - target) * self.scale) ** 2)

    def decode(self, vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        v = vectors.double().cpu().numpy()
        tiny = np.linalg.norm(v, axis=1) < 1e-9
        v[tiny] = (1.0, 0.0, 0.0)  # a vanishing vector carries no direction; any point is as good
        return sphere.from_unit(v)


def target_space(config: LocDiffConfig) -> SHDDSpace | XYZSpace:
    return SHDDSpace(config) if config.representation == "shdd" else XYZSpace(config)
