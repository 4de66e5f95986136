"""The MLflow pyfunc flavour of a LocDiff checkpoint: serves predictions from images or their embeddings.

`mlflow.pyfunc.load_model('models:/locdiff@champion').predict(df)` takes a DataFrame with, per row, one
of: `image` (the image file's bytes; base64 in a JSON scoring request), `path` (an image file inside the
folder the server allows, LOCDIFF_SERVE_PATH_ROOT; off by default) or `embedding` (the encoder's vector,
or a list of view vectors). Images are embedded by the encoder recorded with the model, in the views of
its test-time protocol. It returns lat, lon, spread_km, region_km (the radius of the 90 % region), and
with the parameter `top_k` the k most likely places (top_lat, top_lon, top_probability, best first).

The model is logged with a loader module (LOADER_MODULE, this installed module) and data only: the
artifact holds the checkpoint and, for a pretrained encoder, its weights, and no code, so an edited
artifact cannot run code on load; the data's SHA-256 digests are in the model config and checked before
the weights are read. Versions logged before that (models-from-code, LocDiffPyfunc) still load.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from locdiff_pipeline.method.protocol import Protocol, sample_and_answer
from locdiff_pipeline.tracking import request_input
from locdiff_pipeline.tracking.request_input import INPUT_COLUMNS, RequestRefused

LOADER_MODULE = __name__
CHECKPOINT_ARTIFACT = "checkpoint"  # the checkpoint's folder inside the model's data
ENCODER_ARTIFACT = "encoder_checkpoint"  # only for a model trained on a pretrained encoder's embeddings
DIGESTS_CONFIG = "checkpoint_sha256"


def signature():
    """Image bytes, an image path or an embedding in (one per row, the others empty); lat, lon (degrees),
    spread_km and, with `top_k`, the ranked places out. Parameters: samples per view, top_k."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.binary, "image", required=False),
                ColSpec(DataType.string, "path", required=False),
                ColSpec(Array(DataType.double), "embedding", required=False),
            ]
        ),
        outputs=Schema(
            [ColSpec(DataType.double, name) for name in ("lat", "lon", "spread_km", "region_km")]
            + [
                ColSpec(Array(DataType.double), name, required=False)
                for name in ("top_lat", "top_lon", "top_probability")
            ]
        ),
        # samples 0: the protocol's samples per view, chosen on validation; top_k 0: no ranked places
        params=ParamSchema([ParamSpec("samples", DataType.long, 0), ParamSpec("top_k", DataType.long, 0)]),
    )


def stage_model_data(checkpoint: Path, encoder_checkpoint: str | None, folder: Path) -> Path:
    """The model's data folder (what log_model copies into the artifact): the checkpoint, and the pretrained
    encoder's weights file when there is one."""
    shutil.copytree(checkpoint, folder / CHECKPOINT_ARTIFACT)
    if encoder_checkpoint:
        (folder / ENCODER_ARTIFACT).mkdir()
        shutil.copy2(encoder_checkpoint, folder / ENCODER_ARTIFACT / Path(encoder_checkpoint).name)
    return folder


def data_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under the model's data folder, by relative path (what the model config records)."""
    from locdiff_pipeline.data.image_io import sha256_file

    return {
        path.relative_to(folder).as_posix(): sha256_file(path) for path in sorted(folder.rglob("*")) if path.is_file()
    }


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> ServedLocDiff:
    """MLflow's entry point for a loader-module model: check the data against its digests, then load it."""
    from locdiff_pipeline.tracking.registry import ModelReferenceError

    folder = Path(data_path)
    expected = (model_config or {}).get(DIGESTS_CONFIG)
    if not expected:
        raise ModelReferenceError(f"the LocDiff model at {folder} records no digests of its data; refusing to load it")
    found = data_digests(folder)
    changed = sorted(name for name in set(expected) | set(found) if expected.get(name) != found.get(name))
    if changed:
        raise ModelReferenceError(
            f"the LocDiff model's {', '.join(changed)} in {folder} changed since it was logged (SHA-256 differs, "
            "or a file was added or removed); refusing to load it"
        )
    encoder_files = sorted((folder / ENCODER_ARTIFACT).glob("*"))
    return ServedLocDiff(folder / CHECKPOINT_ARTIFACT, str(encoder_files[0]) if encoder_files else None)


class ServedLocDiff:
    """A loaded LocDiff checkpoint answering pyfunc requests; its encoder is built once, here, at load."""

    def __init__(self, checkpoint: Path, encoder_checkpoint: str | None):
        from locdiff_pipeline.method.model import LocDiffModel

        self.model = LocDiffModel.load(checkpoint)
        self.protocol = Protocol.from_dict(self.model.metadata.get("protocol"))
        self._computing = threading.Lock()
        self.encoder, self.encoder_error = None, None
        try:
            from locdiff_pipeline.encoders.image_encoder import recorded_encoder

            self.encoder = recorded_encoder(self.model.encoder, encoder_checkpoint, self.model.device)
        except (ValueError, OSError) as error:  # embedding requests still work; image requests say why not
            self.encoder_error = str(error)

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        deadline = request_input.Deadline()
        samples, top_k = request_input.bounded_params(params, self.protocol.samples)
        protocol = replace(self.protocol, samples=samples)
        # One request computes at a time: torch already spreads one request over every core, and requests
        # computing side by side split those threads differently, which changes the last bits of sums and
        # so, measured, moved one image's answer by 75 km between 20 concurrent requests.
        with self._computing:
            embeddings = self._embeddings(model_input)
            parts = []
            for start in range(0, len(embeddings), request_input.ROWS_PER_BATCH):
                deadline.check(start, len(embeddings))
                parts.append(self._answer(embeddings[start : start + request_input.ROWS_PER_BATCH], protocol, top_k))
        return pd.concat(parts, ignore_index=True)

    def _answer(self, embeddings: np.ndarray, protocol: Protocol, top_k: int) -> pd.DataFrame:
        prediction, region, drawn = sample_and_answer(self.model, embeddings, protocol)
        answer = pd.DataFrame(
            {"lat": prediction.lat, "lon": prediction.lon, "spread_km": prediction.spread_km, "region_km": region}
        )
        if top_k > 0:
            lat, lon, probability = self.model.ranked(drawn, top_k, plain_weight=self.protocol.plain_weight)
            answer["top_lat"], answer["top_lon"] = list(lat.astype(float)), list(lon.astype(float))
            answer["top_probability"] = list(probability.astype(float))
        return answer

    def _embeddings(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, views, D): each row's embedding as given, or its image embedded in the protocol's views."""
        present = request_input.check_rows(frame)
        rows: list[np.ndarray | None] = [None] * len(frame)
        images, keys, at = [], [], []
        for i, (_, row) in enumerate(frame[present].iterrows()):
            given = [c for c in present if request_input.is_given(row[c])]
            if len(given) != 1:
                raise RequestRefused(f"row {i}: give exactly one of {', '.join(INPUT_COLUMNS)} (got {given or 'none'})")
            if given[0] == "embedding":
                rows[i] = self._vector(row["embedding"], i)
            else:
                image, key = _decoded(request_input.image_bytes(row[given[0]], given[0], i), i)
                images.append(image)
                keys.append(key)
                at.append(i)
        if images:  # views seeded by content: the same image gets the same answer, sent as bytes or path
            views = self._image_encoder().embed_views(images, keys, self.protocol.views, self.protocol.imagery)
            for k, i in enumerate(at):
                rows[i] = views[k]
        if len({r.shape[0] for r in rows}) > 1:  # rows with different view counts: keep the plain view
            rows = [r[:1] for r in rows]
        return np.stack(rows).astype(np.float32)

    def _vector(self, value, row: int) -> np.ndarray:
        try:
            vector = np.stack([np.asarray(v, dtype=np.float32) for v in value])
        except (TypeError, ValueError):
            raise RequestRefused(f"row {row}: the embedding is not a list of numbers") from None
        vector = vector if vector.ndim == 2 else vector[None, :]
        if vector.shape[-1] != self.model.config.embed_dim or not np.isfinite(vector).all():
            raise RequestRefused(
                f"row {row}: the embedding needs {self.model.config.embed_dim} finite numbers per view, "
                f"got shape {tuple(vector.shape)}"
            )
        if vector.shape[0] > request_input.MAX_SAMPLES:
            raise RequestRefused(f"row {row}: at most {request_input.MAX_SAMPLES} views per row")
        return vector

    def _image_encoder(self):
        if self.encoder is None:
            raise RequestRefused(f"this model cannot embed images here: {self.encoder_error}")
        return self.encoder


def _decoded(data: bytes, row: int):
    """(decoded image, its content hash), or RequestRefused naming the row and the reason."""
    from locdiff_pipeline.data.image_io import ImageDecodeError, decode_image, sha256_bytes

    try:
        return decode_image(data, "image bytes"), sha256_bytes(data)
    except ImageDecodeError as error:
        raise RequestRefused(f"row {row}: {error}") from None


class LocDiffPyfunc(mlflow.pyfunc.PythonModel):
    """Versions logged before #24 as models-from-code (their pyfunc_code.py builds this): the same serving,
    their checkpoint checked against the digests in their model config."""

    def load_context(self, context) -> None:
        from locdiff_pipeline.tracking.registry import verify_checkpoint

        checkpoint = Path(context.artifacts[CHECKPOINT_ARTIFACT])
        expected = (context.model_config or {}).get(DIGESTS_CONFIG)
        if expected:
            verify_checkpoint(checkpoint, expected, "the logged LocDiff model")
        self.served = ServedLocDiff(checkpoint, context.artifacts.get(ENCODER_ARTIFACT))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.served.predict(model_input, params)
