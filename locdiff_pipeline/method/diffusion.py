"""Gaussian diffusion (DDPM forward process) with x0-prediction, and a DDIM/DDPM sampler.

One sampler serves both: DDIM with eta=0 on a subsequence of timesteps (fast, deterministic), and
ancestral DDPM, which is DDIM with eta=1 over every timestep.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from locdiff_pipeline.method.config import LocDiffConfig


def beta_schedule(kind: str, timesteps: int) -> np.ndarray:
    """Betas for the forward process: 'cosine' (Nichol & Dhariwal) or 'linear' (Ho et al.)."""
    if kind == "linear":
        return np.linspace(1e-4, 0.02, timesteps, dtype=np.float64)
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alphas_cumprod = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return np.clip(1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0.0, 0.999)


class GaussianDiffusion:
    def __init__(self, config: LocDiffConfig):
        self.config = config
        self.timesteps = config.timesteps
        self.alphas_cumprod = torch.tensor(
            np.cumprod(1.0 - beta_schedule(config.schedule, config.timesteps)), dtype=torch.float64
        )

    def _abar(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.alphas_cumprod.to(device)[t].float()[:, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t, x0.device)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def training_loss(
        self, net, x0_scaled: torch.Tensor, cond: torch.Tensor, space, generator: torch.Generator
    ) -> torch.Tensor:
        """Noise x0 at a random timestep, denoise, and score the clean estimate in the target space."""
        n, device = x0_scaled.shape[0], x0_scaled.device
        t = torch.randint(0, self.timesteps, (n,), generator=generator, device=device)
        noise = torch.randn(x0_scaled.shape, generator=generator, device=device)
        drop = torch.rand(n, generator=generator, device=device) < self.config.cond_dropout
        offset = self.condition_noise(cond, generator)
        x_t = self.q_sample(x0_scaled, t, noise)
        output = net(x_t, cond, t, drop, offset)
        x0 = output / space.scale  # the network predicts the clean vector: the SHDD loss applies to it
        return space.loss(x0, x0_scaled / space.scale, generator)

    def condition_noise(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """Gaussian noise of config.cond_noise standard deviations for each condition row (None when 0): at
        training, the denoiser learns the posterior of locations given a neighbourhood of the image, not the
        one location its training image has; at sampling, each sample sees its own draw, so the samples
        spread over that neighbourhood's locations (see docs/results.md)."""
        if self.config.cond_noise <= 0:
            return None
        return self.config.cond_noise * torch.randn(cond.shape, generator=generator, device=cond.device)

    @torch.no_grad()
    def sample(
        self,
        net,
        cond: torch.Tensor,
        dim: int,
        generator: torch.Generator,
        start: torch.Tensor | None = None,
        unconditional: bool = False,
    ) -> torch.Tensor:
        """Generate clean (scaled) vectors for each condition row, by DDIM or ancestral DDPM.

        Steps (Song et al. 2021, eq. 12; eta = 0 is DDIM, eta = 1 over every timestep is DDPM):
        1. x_T ~ N(0, I) (`start` when given: see row_noise); each row's condition projections (and its
           condition noise) fixed for the chain; with `unconditional`, the learnt null condition of
           classifier-free guidance for every row (samples of the training locations' density as the model
           learnt it);
        2. at each timestep t of the chain: the clean estimate x0 from the network (with classifier-free
           guidance, the unconditional output moved towards the conditional one);
        3. the noise implied by x_t and x0;
        4. x_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps (+ sigma z when eta > 0)."""
        config, device, n = self.config, cond.device, cond.shape[0]
        if config.sampler == "ddpm":
            times, eta = list(range(self.timesteps - 1, -1, -1)), 1.0
        else:
            count = min(config.sample_steps, self.timesteps)
            times, eta = sorted({int(round(x)) for x in np.linspace(0, self.timesteps - 1, count)}, reverse=True), 0.0
        # 1. the starting noise and the condition, computed once for the chain
        x = start.to(device) if start is not None else torch.randn((n, dim), generator=generator, device=device)
        offset = self.condition_noise(cond, generator)  # one draw per sample, kept through its whole chain
        every_row = torch.ones(n, dtype=torch.bool, device=device)
        conditions = net.conditions(cond, every_row if unconditional else None, offset)
        guided = config.guidance_scale != 1.0 and not unconditional
        if guided:
            unconditioned = net.conditions(cond, every_row)
        abar_all = self.alphas_cumprod.to(device).float()
        x0 = x
        for i, step in enumerate(times):
            # 2. the clean estimate (every row shares the timestep: one time embedding for all)
            t = torch.full((1,), step, device=device, dtype=torch.long)
            output = net.denoise(x, t, conditions)
            if guided:
                unconditional = net.denoise(x, t, unconditioned)
                output = unconditional + config.guidance_scale * (output - unconditional)
            x0 = output
            # 3. the noise it implies, 4. the step to the previous timestep
            abar = abar_all[step]
            abar_prev = abar_all[times[i + 1]] if i + 1 < len(times) else torch.tensor(1.0, device=device)
            eps = predict_noise_from_start(x, x0, abar)
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).clamp(min=0).sqrt()
            x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and i + 1 < len(times):
                x = x + sigma * torch.randn(x.shape, generator=generator, device=device)
        return x0


def predict_noise_from_start(x_t: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The noise implied by a noisy vector and an estimate of its clean vector:
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar), Ho et al. (2020) eq. 4 solved for eps."""
    return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()
