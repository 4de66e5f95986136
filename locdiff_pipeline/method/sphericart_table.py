"""sphericart's float64 spherical harmonics, computed chunk by chunk on every core and cast on the way.

Why this module: the project's tables are float32 evaluated in float64 (sphericart's own float32 mode
is wrong by 1e-1 at L = 20). One sphericart call over all points parallelises inside sphericart (OpenMP)
and then a single thread casts its float64 result and takes the first-touch page faults of the output,
so the encode ran at 0.5-0.75x of sphericart's bare float64 call (measured, `benchmarks/bench_shdd.py`).
Here each worker thread owns its calculator (a calculator keeps scratch state: two threads sharing one
write wrong values, measured), runs sphericart single-threaded on a cache-sized chunk and casts it into
its rows of the output: computation, cast and page faults all run on every core, with no OpenMP team
spinning beside another thread (0.74-0.91x sphericart's float64 call, measured on the 2-core machine).
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from locdiff_pipeline.method import sphere

_CHUNK_VALUES = 1 << 20  # per call: the float64 chunk (8 MB) stays in cache for the cast
UnitsOf = Callable[[int, int], np.ndarray]  # (start, stop) -> those points' float64 unit vectors
_local = threading.local()
_pool_lock = threading.Lock()
# (pid that made it, pool, its worker count): a forked child makes its own
_pool: tuple[int, ThreadPoolExecutor, int] | None = None


def available() -> bool:
    """Whether sphericart is installed."""
    try:
        import sphericart  # noqa: F401
    except ImportError:
        return False
    return True


def harmonics(xyz: np.ndarray, L: int, dtype: np.dtype) -> np.ndarray:
    """The (N, (L+1)^2) real spherical harmonics of unit vectors xyz (N, 3) float64, in `dtype`."""
    return _table(xyz.shape[0], lambda start, stop: xyz[start:stop], L, dtype)


def harmonics_of_points(lat: np.ndarray, lon: np.ndarray, L: int, dtype: np.dtype) -> np.ndarray:
    """The same for valid points in degrees: each chunk's unit vectors are made by the thread that uses
    them (200,000 points' trigonometry is a sixth of the table's time at L = 20 when done up front)."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    return _table(lat.shape[0], lambda start, stop: sphere.unit_vectors(lat[start:stop], lon[start:stop]), L, dtype)


def _table(rows: int, units_of: UnitsOf, L: int, dtype: np.dtype) -> np.ndarray:
    """Chunks go round the worker threads; with one chunk, or where sphericart's OpenMP runtime cannot be
    told to use one thread per worker, the calling thread does it all (sphericart then uses every core)."""
    out = np.empty((rows, (L + 1) ** 2), dtype=dtype)
    chunk = max(256, _CHUNK_VALUES // (L + 1) ** 2)
    starts = list(range(0, rows, chunk))
    workers, count = _worker_pool() or (None, 1)
    if len(starts) < 2 or workers is None:
        _compute_chunks(units_of, L, out, starts, chunk)
        return out
    jobs = [workers.submit(_compute_chunks, units_of, L, out, starts[k::count], chunk) for k in range(count)]
    for job in jobs:
        job.result()
    return out


def _compute_chunks(units_of: UnitsOf, L: int, out: np.ndarray, starts: list[int], chunk: int) -> None:
    """Each chunk computed in float64 into this thread's buffer, then cast into its rows of `out`."""
    calculator, buffer = _thread_calculator(L, chunk)
    for start in starts:
        stop = min(start + chunk, out.shape[0])
        rows = buffer[: stop - start]
        points = np.ascontiguousarray(units_of(start, stop))
        compute_into = getattr(calculator, "_compute_numpy", None)  # in place; private, so checked
        if compute_into is None:
            rows = calculator.compute(points)
        else:
            compute_into(points, rows, None, None)
        out[start:stop] = rows


def _thread_calculator(L: int, chunk: int):
    """This thread's calculator of degree L and a float64 buffer of at least `chunk` rows (kept per thread)."""
    import sphericart

    calculators = _local.__dict__.setdefault("calculators", {})
    if L not in calculators or calculators[L][1].shape[0] < chunk:
        calculators[L] = (sphericart.SphericalHarmonics(L), np.empty((chunk, (L + 1) ** 2)))
    return calculators[L]


def _worker_pool() -> tuple[ThreadPoolExecutor, int] | None:
    """One worker per core this process may use, each with sphericart's OpenMP team set to one thread;
    None on one core or where sphericart's OpenMP runtime is not found."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool[0] == os.getpid():
            return _pool[1], _pool[2]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        set_threads = _openmp_set_num_threads()
        if cores < 2 or set_threads is None:
            return None
        pool = ThreadPoolExecutor(cores, thread_name_prefix="sphericart", initializer=set_threads, initargs=(1,))
        _pool = (os.getpid(), pool, cores)
        return pool, cores


def _openmp_set_num_threads():
    """omp_set_num_threads of the OpenMP runtime sphericart's wheel bundles (its own libgomp, not
    torch's): it sets the calling thread's team size only. None when there is no such library."""
    import sphericart

    package = os.path.dirname(os.path.abspath(sphericart.__file__))
    for path in sorted(glob.glob(os.path.join(package, os.pardir, "sphericart.libs", "lib*omp*.so*"))):
        try:
            return ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
    return None
