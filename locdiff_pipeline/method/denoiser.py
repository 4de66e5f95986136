"""CS-UNet: the conditional SIREN U-Net that denoises SHDD vectors (the article's backbone).

SHDD coefficients are sums of sines and cosines of the location, which sinusoidal (SIREN) layers
represent and propagate gradients through well. Each C-Siren block projects the noisy latent, applies
the timestep as a FiLM scale and shift, fuses the image condition, and passes a residual on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from locdiff_pipeline.method.standardise import guarded_spread, standardised


class SirenLayer(nn.Module):
    """sin(w0 * (W x + b)) with the SIREN initialisation (Sitzmann et al. 2020)."""

    def __init__(self, in_features: int, out_features: int, w0: float = 30.0, is_first: bool = False):
        super().__init__()
        self.w0 = w0
        self.linear = nn.Linear(in_features, out_features)
        bound = 1.0 / in_features if is_first else math.sqrt(6.0 / in_features) / w0
        nn.init.uniform_(self.linear.weight, -bound, bound)
        nn.init.uniform_(self.linear.bias, -1.0 / math.sqrt(in_features), 1.0 / math.sqrt(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(embedding, (0, dim % 2))


class CSirenBlock(nn.Module):
    """C-Siren block: project x, FiLM by the timestep, fuse the image condition, residual out."""

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, time_dim: int, w0: float, is_first: bool = False):
        super().__init__()
        self.project = SirenLayer(in_dim, out_dim, w0, is_first=is_first)
        self.film = nn.Linear(time_dim, 2 * out_dim)
        nn.init.zeros_(self.film.weight)  # start as the identity modulation
        nn.init.zeros_(self.film.bias)
        self.condition = nn.Linear(cond_dim, out_dim)
        self.fuse = SirenLayer(2 * out_dim, out_dim, w0)
        self.skip = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, condition: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """`condition` is this block's projection of the image condition (self.condition(cond)), computed once
        per image for a whole sampling chain; `time` may be one row for a batch that shares its timestep."""
        hidden = self.project(x)
        scale, shift = self.film(time).chunk(2, dim=-1)
        hidden = hidden * (1.0 + scale) + shift
        hidden = self.fuse(torch.cat([hidden, condition.expand(hidden.shape[0], -1)], dim=-1))
        return (hidden + self.skip(x)) / math.sqrt(2.0)


class CSUNet(nn.Module):
    """U-Net over a flat vector: down C-Siren stages, a middle block, up stages with skip connections.

    A learned null condition replaces the image embedding where `drop` is set (classifier-free guidance).
    """

    def __init__(
        self, data_dim: int, cond_dim: int, hidden_dims: tuple[int, ...], time_dim: int = 128, w0: float = 30.0
    ):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.null_condition = nn.Parameter(torch.zeros(cond_dim))
        # Image embeddings share a large common direction (frozen CLIP features are far from centred);
        # standardising each dimension with training statistics lets the blocks see what differs.
        self.register_buffer("cond_mean", torch.zeros(cond_dim))
        self.register_buffer("cond_std", torch.ones(cond_dim))
        dims = [data_dim, *hidden_dims]
        self.down = nn.ModuleList(
            CSirenBlock(dims[i], dims[i + 1], cond_dim, time_dim, w0, is_first=i == 0) for i in range(len(hidden_dims))
        )
        self.middle = CSirenBlock(hidden_dims[-1], hidden_dims[-1], cond_dim, time_dim, w0)
        up_out = [*reversed(hidden_dims[:-1]), hidden_dims[0]]
        up_in = [hidden_dims[-1], *up_out[:-1]]
        skips = list(reversed(hidden_dims))
        self.up = nn.ModuleList(CSirenBlock(i + s, o, cond_dim, time_dim, w0) for i, s, o in zip(up_in, skips, up_out))
        self.out = nn.Linear(hidden_dims[0], data_dim)

    @torch.no_grad()
    def set_condition_statistics(self, embeddings: torch.Tensor) -> None:
        """Fix the standardisation of the condition from the training embeddings (N, cond_dim)."""
        self.set_condition_moments(embeddings.mean(dim=0), embeddings.std(dim=0))

    def set_condition_moments(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The same from moments computed elsewhere (a stream that never holds every embedding at once).
        Near-constant dimensions are ignored (standardise.guarded_spread)."""
        self.cond_mean.copy_(torch.as_tensor(mean, dtype=self.cond_mean.dtype))
        self.cond_std.copy_(guarded_spread(torch.as_tensor(std, dtype=self.cond_std.dtype)))

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        drop: torch.Tensor | None = None,
        cond_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise x at timesteps t given image embeddings `cond` (see `conditions` for drop and cond_offset)."""
        return self.denoise(x, t, self.conditions(cond, drop, cond_offset))

    def conditions(
        self, cond: torch.Tensor, drop: torch.Tensor | None = None, cond_offset: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Every block's projection of the image condition: standardised with the training statistics, plus
        `cond_offset` (in standard deviations: the condition noise of LocDiffConfig.cond_noise), the learnt
        null condition where `drop` is set (classifier-free guidance). They depend on the image alone, so a
        sampling chain computes them once, not at each of its steps."""
        cond = standardised(cond, self.cond_mean.to(cond.dtype), self.cond_std.to(cond.dtype))
        if cond_offset is not None:
            cond = cond + cond_offset.to(cond.dtype)
        if drop is not None:
            cond = torch.where(drop[:, None], self.null_condition.to(cond.dtype).expand_as(cond), cond)
        return [block.condition(cond) for block in (*self.down, self.middle, *self.up)]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        """The network's output for noisy x at timesteps t (one per row, or one for all) given `conditions`."""
        time = self.time_mlp(timestep_embedding(t, self.time_dim))
        per_block = iter(conditions)
        skips = []
        hidden = x
        for block in self.down:
            hidden = block(hidden, next(per_block), time)
            skips.append(hidden)
        hidden = self.middle(hidden, next(per_block), time)
        for block in self.up:
            hidden = block(torch.cat([hidden, skips.pop()], dim=-1), next(per_block), time)
        return self.out(hidden)
