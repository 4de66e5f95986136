"""Starting noise keyed by each row's own condition, so an image's samples do not depend on its batch.

A DDIM chain (eta = 0) is a deterministic function of its starting noise x_T. Drawing x_T from one generator
for a whole batch makes an image's answer depend on which images came before it; keying each row's x_T by
its content (its embedding, rounded to KEY_STEP so that the last bits a batched matrix product may change
do not change the key), the index of the sample and the seed makes an image's samples,
and so its answer, the same in the benchmark's `predictions` table, in `locdiff predict` and in the served
model, whatever else shares the batch. (Ancestral DDPM adds noise at every step from a batch generator and
keeps that dependence.)

Uniforms come from SplitMix64 (Steele et al., 2014), a counter-based generator: the j-th number of the stream
keyed k is mix(k + j * golden), vectorised over rows and counters in numpy; Box-Muller turns pairs of them
into Gaussians.
"""

from __future__ import annotations

import hashlib

import numpy as np

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX_1, MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
KEY_STEP = 1.0 / 256  # embeddings are unit-norm: their entries differ by far more than this between images


def row_keys(rows: np.ndarray, sample_index: np.ndarray, seed: int) -> np.ndarray:
    """(N,) uint64 keys: a hash of each row (rounded to KEY_STEP), its sample index and the seed."""
    rows = np.ascontiguousarray(np.round(np.asarray(rows, dtype=np.float64) / KEY_STEP), dtype=np.int32)
    keys = np.empty(len(rows), dtype=np.uint64)
    prefix = int(seed).to_bytes(8, "little", signed=True)
    for i, (row, index) in enumerate(zip(rows, sample_index, strict=True)):
        digest = hashlib.blake2b(prefix + int(index).to_bytes(8, "little") + row.tobytes(), digest_size=8)
        keys[i] = np.frombuffer(digest.digest(), dtype=np.uint64)[0]
    return keys


def splitmix64(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of uint64 states (arithmetic modulo 2^64)."""
    with np.errstate(over="ignore"):
        z = state.astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * MIX_1
        z = (z ^ (z >> np.uint64(27))) * MIX_2
        return z ^ (z >> np.uint64(31))


def uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """(N, count) uniforms in (0, 1): the first `count` numbers of each key's SplitMix64 stream."""
    with np.errstate(over="ignore"):
        states = keys[:, None] + (np.arange(1, count + 1, dtype=np.uint64) * GOLDEN_GAMMA)[None, :]
    bits = splitmix64(states) >> np.uint64(11)  # 53 random bits
    return (bits.astype(np.float64) + 0.5) / 2.0**53


def gaussian_rows(keys: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) float32 standard normal rows, each a function of its key alone (Box-Muller)."""
    pairs = -(-dim // 2)
    u = uniforms(keys, 2 * pairs)
    radius = np.sqrt(-2.0 * np.log(u[:, :pairs]))
    angle = 2.0 * np.pi * u[:, pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :dim].astype(np.float32)


def starting_noise(rows: np.ndarray, sample_index: np.ndarray, seed: int, dim: int) -> np.ndarray:
    """x_T for each condition row: (N, dim), keyed by the row, its sample index and the seed."""
    return gaussian_rows(row_keys(rows, sample_index, seed), dim)
