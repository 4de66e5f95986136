"""What a served model accepts in one request, and the bounds that keep a request's work finite.

A model server reads its input from anyone who can reach it, so: the `path` input reads nothing unless
the server was started with LOCDIFF_SERVE_PATH_ROOT, and then only regular files inside that folder, no
larger than MAX_IMAGE_BYTES (a refused path gets the same answer whether or not it exists, so errors do
not map the server's files); rows, samples and top_k have upper bounds; and a request stops between
batches of rows once the server's own deadline (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) has passed.
Every refusal is a RequestRefused: HTTP 400 from `mlflow models serve`, a ValueError in process.
"""

from __future__ import annotations

import base64
import binascii
import os
import time

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from locdiff_pipeline import settings

INPUT_COLUMNS = ("image", "path", "embedding")
MAX_ROWS = 256  # rows per request
MAX_SAMPLES = 256  # samples per view (the protocol chooses among 1, 4, 16, 64)
MAX_TOP_K = 32
MAX_IMAGE_BYTES = 64 << 20
ROWS_PER_BATCH = 16  # the deadline is checked between batches of this many rows
_DEFAULT_DEADLINE_S = 60.0  # MLflow's own default request timeout


class RequestRefused(MlflowException, ValueError):
    """A request the served model will not run, with the reason: a 400 from the scoring server."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def bounded_params(params: dict | None, default_samples: int) -> tuple[int, int]:
    """(samples per view, top_k) from the request's parameters, each within its bound."""
    params = params or {}
    samples = _whole(params.get("samples"), "samples", default_samples, MAX_SAMPLES)
    return samples, _whole(params.get("top_k"), "top_k", 0, MAX_TOP_K)


def _whole(value, name: str, default: int, bound: int) -> int:
    if value is None or value == 0:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RequestRefused(f"{name} must be a whole number, got {value!r}") from None
    if not 1 <= number <= bound:
        raise RequestRefused(f"{name} must be between 1 and {bound}, got {number}")
    return number


def check_rows(frame: pd.DataFrame) -> list[str]:
    """The input columns present, after checking the row count."""
    if len(frame) > MAX_ROWS:
        raise RequestRefused(f"at most {MAX_ROWS} rows per request, got {len(frame)}; send several requests")
    present = [c for c in INPUT_COLUMNS if c in frame.columns]
    if not present:
        raise RequestRefused(f"the input needs one of the columns {', '.join(INPUT_COLUMNS)}")
    return present


def is_given(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return not (isinstance(value, str | bytes) and len(value) == 0)


def image_bytes(value, column: str, row: int) -> bytes:
    """The bytes of a row's image: given as bytes, as base64 text (JSON), or read from an allowed path."""
    if column == "path":
        return _read_allowed(str(value), row)
    if isinstance(value, str):  # a JSON request carries bytes as base64 text
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestRefused(f"row {row}: the image is text but not base64-encoded bytes") from None
    return bytes(value)


def _read_allowed(text: str, row: int) -> bytes:
    from locdiff_pipeline.data.image_io import ImageReadError, read_file_bytes

    root = settings.current().serve_path_root
    if root is None:
        raise RequestRefused(
            f"row {row}: the path input is off on this server (start it with LOCDIFF_SERVE_PATH_ROOT=FOLDER "
            "to read image files inside FOLDER); send the image's bytes instead"
        )
    if "\x00" in text:
        raise RequestRefused(f"row {row}: the path holds a NUL byte")
    resolved = (root / text).resolve()  # relative paths are inside the root; symlinks are followed
    refused = RequestRefused(f"row {row}: {text!r} is not a readable image file inside the allowed folder")
    if not resolved.is_relative_to(root):
        raise refused
    try:
        size = resolved.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise RequestRefused(f"row {row}: {text!r} is larger than {MAX_IMAGE_BYTES >> 20} MB")
        return read_file_bytes(resolved)
    except (OSError, ImageReadError):
        raise refused from None


class Deadline:
    """The time by which a request must be answered: the scoring server's timeout from its start."""

    def __init__(self, seconds: float | None = None):
        if seconds is None:
            raw = os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "")
            seconds = float(raw) if raw.strip() else _DEFAULT_DEADLINE_S
        self.seconds, self.ends = seconds, time.monotonic() + seconds

    def check(self, done: int, total: int) -> None:
        """Stop the request (between batches of rows) once its deadline has passed."""
        if time.monotonic() >= self.ends:
            raise RequestRefused(
                f"the request ran past its {self.seconds:g} s deadline after {done} of {total} rows; "
                "send fewer rows or fewer samples"
            )
