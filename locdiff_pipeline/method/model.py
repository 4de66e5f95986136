"""LocDiffModel: a trained denoiser with its config and encoder identity; predicts and checkpoints.

A checkpoint is a folder: `config.json` (hyper-parameters, the image encoder the model expects, free
metadata) and `weights.pt` (a plain state dict, loaded with weights_only=True, so loading a checkpoint
never runs code from it), and `checksums.json` (their SHA-256, checked before either is read).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from locdiff_pipeline.method import row_noise, shdd, sphere
from locdiff_pipeline.method.config import LocDiffConfig
from locdiff_pipeline.method.denoiser import CSUNet
from locdiff_pipeline.method.devices import resolve_device, step_generator
from locdiff_pipeline.method.diffusion import GaussianDiffusion
from locdiff_pipeline.method.target_space import target_space
from locdiff_pipeline.method.views import COMBINE_RULES, sample_weights

CHECKPOINT_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
CHECKSUMS_FILE = "checksums.json"  # SHA-256 of the two files above, written with them


class CheckpointError(ValueError):
    """A checkpoint folder whose files cannot be loaded; the message names the file and the reason."""


@dataclass
class Prediction:
    """Per image: the combined prediction, the spread of its samples around it, and every sample."""

    lat: np.ndarray
    lon: np.ndarray
    spread_km: np.ndarray  # RMS distance of the samples from the prediction (a per-image confidence)
    sample_lat: np.ndarray  # (N, views * samples): every individual prediction, for uncertainty maps
    sample_lon: np.ndarray


@dataclass
class Samples:
    """Generated target-space vectors of N images, V views and S samples per view, and their decodes."""

    vectors: torch.Tensor  # (N, V, S, dim), unscaled, on the CPU
    lat: np.ndarray  # (N, V, S)
    lon: np.ndarray

    def first(self, views: int | None = None, samples: int | None = None) -> Samples:
        """Each image's first `views` views and their first `samples` samples (None: all)."""
        v, s = slice(None, views), slice(None, samples)
        return Samples(self.vectors[:, v, s], self.lat[:, v, s], self.lon[:, v, s])


class LocDiffModel:
    def __init__(
        self,
        config: LocDiffConfig,
        encoder: dict | None = None,
        device: str | torch.device | None = None,
        metadata: dict | None = None,
    ):
        self.config = config
        self.encoder = dict(encoder or {})
        self.metadata = dict(metadata or {})
        self.device = resolve_device(config.device) if device is None else torch.device(device)
        self.space = target_space(config)
        self.diffusion = GaussianDiffusion(config)
        self.net = CSUNet(self.space.dim, config.embed_dim, config.hidden_dims, config.time_dim, config.siren_w0).to(
            self.device
        )

    def _check_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        array = np.asarray(embeddings, dtype=np.float32)
        if array.ndim == 2:
            array = array[:, None, :]
        if array.ndim != 3 or array.shape[-1] != self.config.embed_dim:
            raise ValueError(
                f"embeddings must be (N, D) or (N, views, D) with D={self.config.embed_dim}, got {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError("embeddings contain NaN or inf")
        return array

    @torch.no_grad()
    def sample_vectors(
        self,
        embeddings: np.ndarray,
        seed: int = 0,
        batch_size: int = 4096,
        start: np.ndarray | None = None,
        unconditional: bool = False,
    ) -> torch.Tensor:
        """Generated (unscaled) target-space vectors, one per embedding row (N, D) -> (N, dim), from the
        starting noise `start` (N, dim) when given, else from a generator per batch; with `unconditional`, under
        the null condition (the embeddings then only count the rows)."""
        self.net.eval()
        cond_all = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        out = []
        for i in range(0, cond_all.shape[0], batch_size):
            cond = cond_all[i : i + batch_size].to(self.device)
            noise = None if start is None else torch.as_tensor(start[i : i + batch_size])
            generator = step_generator(seed, i, self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                vectors = self.diffusion.sample(self.net, cond, self.space.dim, generator, noise, unconditional)
            out.append(vectors.float() / self.space.scale)
        return torch.cat(out) if out else torch.zeros((0, self.space.dim), device=self.device)

    def sample(self, embeddings: np.ndarray, samples: int = 1, seed: int = 0) -> Samples:
        """Sample every view of (N, D) or (N, views, D) embeddings `samples` times and decode each sample.
        Each sample's starting noise is keyed by its view's embedding, its index and the seed (row_noise), so
        an image's samples are the same whatever other images are sampled with it."""
        array = self._check_embeddings(embeddings)
        n, views, dim = array.shape
        flat = np.repeat(array.reshape(n * views, dim), samples, axis=0)
        index = np.tile(np.arange(samples), n * views)
        vectors = self.sample_vectors(
            flat, seed=seed, start=row_noise.starting_noise(flat, index, seed, self.space.dim)
        )
        lat, lon = self.space.decode(vectors)
        shape = (n, views, samples)
        return Samples(vectors.float().cpu().reshape(*shape, -1), lat.reshape(shape), lon.reshape(shape))

    def sample_prior(self, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`count` places drawn under the null condition: the training locations' density as the model learnt it
        (classifier-free guidance trains the null condition on every location), with no image to go on."""
        blank = np.zeros((count, self.config.embed_dim), dtype=np.float32)
        return self.space.decode(self.sample_vectors(blank, seed=seed, unconditional=True))

    def combine(
        self, drawn: Samples, rule: str = "mixture", views: int | None = None, plain_weight: float | None = None
    ) -> Prediction:
        """One prediction per image from its first `views` views (all by default) under a COMBINE_RULES rule
        (see `views`), the plain view weighing `plain_weight` (None: every view alike)."""
        if rule not in COMBINE_RULES:
            raise ValueError(f"rule must be one of {COMBINE_RULES}, got {rule!r}")
        chosen = drawn.first(views)
        n, view_count, samples = chosen.lat.shape
        weights = sample_weights(view_count, samples, plain_weight)
        lat, lon = chosen.lat.reshape(n, -1), chosen.lon.reshape(n, -1)
        units = sphere.to_unit(lat.ravel(), lon.ravel()).reshape(n, -1, 3)
        if rule == "centre":
            c_lat, c_lon, spread = sphere.grouped_centre_and_spread(units, weights)
            return Prediction(c_lat, c_lon, spread, lat, lon)
        c_lat, c_lon = self.space.decode(self._mixture(chosen, weights).to(self.device))
        spread = sphere.spread_about_km(units, sphere.to_unit(c_lat, c_lon), weights)
        return Prediction(c_lat, c_lon, spread, lat, lon)

    @staticmethod
    def _mixture(chosen: Samples, weights: np.ndarray) -> torch.Tensor:
        """The weighted mean of each image's sampled vectors (N, dim): the mixture of their densities."""
        n = chosen.vectors.shape[0]
        flat = chosen.vectors.reshape(n, -1, chosen.vectors.shape[-1])
        return torch.einsum("nsk,s->nk", flat, torch.as_tensor(weights, dtype=flat.dtype))

    def ranked(
        self, drawn: Samples, k: int, views: int | None = None, plain_weight: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k most likely places of each image's mixture density (its first `views` views, weighted as in
        `combine`) with their probabilities: (lat, lon, probability), each (N, k), best first; rank 1 is
        the mixture's mode."""
        if self.config.representation != "shdd":
            raise ValueError("ranked answers need the SHDD representation (a density), not raw xyz")
        chosen = drawn.first(views)
        _, view_count, samples = chosen.lat.shape
        mixture = self._mixture(chosen, sample_weights(view_count, samples, plain_weight))
        return shdd.ranked_modes(mixture.to(self.device), self.config.L, k, rho=self.config.rho_km)

    def predict_embeddings(
        self,
        embeddings: np.ndarray,
        samples: int = 1,
        seed: int = 0,
        rule: str = "mixture",
        plain_weight: float | None = None,
    ) -> Prediction:
        """Predict from (N, D) or (N, views, D) embeddings: every view sampled `samples` times and
        combined by `rule` (COMBINE_RULES), the plain view weighing `plain_weight`."""
        return self.combine(self.sample(embeddings, samples, seed), rule, plain_weight=plain_weight)

    def save(self, directory: str | Path) -> Path:
        """Write the checkpoint folder atomically (a crash never leaves a half-written checkpoint)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        document = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "encoder": self.encoder,
            "metadata": self.metadata,
        }
        try:
            (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
            torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, staging / WEIGHTS_FILE)
            digests = {name: _sha256(staging / name) for name in (CONFIG_FILE, WEIGHTS_FILE)}
            (staging / CHECKSUMS_FILE).write_text(json.dumps(digests, indent=2, sort_keys=True))
        except BaseException:  # a full disk, an interrupt: no half-written staging folder stays behind
            _remove_tree(staging)
            raise
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, retired)
            os.replace(staging, directory)
            _remove_tree(retired)
        else:
            os.replace(staging, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None) -> LocDiffModel:
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(f"{directory} is not a LocDiff checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        _verify_checksums(directory)
        try:
            document = json.loads(config_path.read_text())
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{config_path}: not a valid checkpoint config ({error})") from None
        if document.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{directory}: unsupported checkpoint format {document.get('format')!r}")
        try:
            config = LocDiffConfig.from_dict(document["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{config_path}: invalid model configuration ({error!r})") from None
        model = cls(
            config, document.get("encoder"), device=device or resolve_device("auto"), metadata=document.get("metadata")
        )
        try:
            state = torch.load(weights_path, map_location=model.device, weights_only=True)
            model.net.load_state_dict(state)
        except Exception as error:  # unpickling refusals, truncated zips, shape mismatches
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{weights_path}: not loadable weights for this model ({reason[:300]})") from None
        model.net.eval()
        return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_checksums(directory: Path) -> None:
    """Refuse a checkpoint whose files differ from the SHA-256 written beside them at save (a flipped
    byte, a truncated copy); checkpoints saved before checksums were written load unchecked."""
    recorded_path = directory / CHECKSUMS_FILE
    if not recorded_path.is_file():
        return
    try:
        recorded = json.loads(recorded_path.read_text())
        changed = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if recorded.get(name) != _sha256(directory / name)]
    except (ValueError, UnicodeDecodeError, AttributeError):
        changed = [CHECKSUMS_FILE]
    if changed:
        raise CheckpointError(
            f"{directory}: {', '.join(changed)} differ from the checksums saved with the checkpoint "
            "(changed or damaged since it was written); refusing to load it"
        )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
