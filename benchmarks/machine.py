"""What a benchmark ran on, printed beside its figures: the same code is several times faster or slower on
another CPU of the same name (issue #26), so a figure without its machine is not comparable."""

from __future__ import annotations

import os
import platform
import re

import numpy as np
import torch


def cpu_model() -> str:
    """The CPU's name with its family and model numbers (a VM often shows only "AMD EPYC": the numbers
    tell Zen 2, 3 and 4 apart)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.processor() or platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def torch_blas() -> str:
    """The BLAS torch was built with, from its build configuration."""
    match = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def numpy_blas() -> str:
    """numpy's BLAS library and version."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError):
        return "unknown"
    return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()


def describe() -> str:
    """One line: CPU, cores, torch threads and SIMD level, BLAS and FFT backends."""
    fft = "MKL" if torch.backends.mkl.is_available() else "pocketfft"
    return (
        f"CPU {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()} kernels, BLAS "
        f"{torch_blas()}, FFT {fft}; numpy BLAS {numpy_blas()}"
    )


if __name__ == "__main__":
    print(describe())
