"""The MLflow pyfunc flavour of a LocDiff checkpoint: serves predictions from images or their embeddings.

`mlflow.pyfunc.load_model('models:/locdiff@champion').predict(df)` takes a DataFrame with, per row, one
of: `image` (the image file's bytes; base64 in a JSON scoring request), `path` (an image file the server
can read) or `embedding` (the encoder's vector, or a list of view vectors). Images are embedded by the
encoder recorded with the model, in the views of its test-time protocol. It returns lat, lon, spread_km,
region_km (the radius of the 90 % region), and with the parameter `top_k` the k most likely places
(top_lat, top_lon, top_probability, best first).
It is logged as models-from-code (MODEL_CODE), and refuses a checkpoint whose files changed since it was
logged (their SHA-256 is in the model config).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from locdiff_pipeline.method.protocol import Protocol, sample_and_answer

CHECKPOINT_ARTIFACT = "checkpoint"
ENCODER_ARTIFACT = "encoder_checkpoint"  # only for a model trained on a pretrained encoder's embeddings
DIGESTS_CONFIG = "checkpoint_sha256"
MODEL_CODE = str(Path(__file__).with_name("pyfunc_code.py"))
INPUT_COLUMNS = ("image", "path", "embedding")


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


class LocDiffPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from locdiff_pipeline.method.model import LocDiffModel
        from locdiff_pipeline.tracking.registry import verify_checkpoint

        checkpoint = Path(context.artifacts[CHECKPOINT_ARTIFACT])
        expected = (context.model_config or {}).get(DIGESTS_CONFIG)
        if expected:
            verify_checkpoint(checkpoint, expected, "the logged LocDiff model")
        self.model = LocDiffModel.load(checkpoint)
        self.protocol = Protocol.from_dict(self.model.metadata.get("protocol"))
        self.encoder_checkpoint = context.artifacts.get(ENCODER_ARTIFACT)
        self.encoder = None  # built at the first request with images; embedding requests never need it

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        samples, top_k = int(params.get("samples") or self.protocol.samples), int(params.get("top_k") or 0)
        embeddings = self._embeddings(model_input)
        protocol = replace(self.protocol, samples=samples)
        prediction, region, drawn = sample_and_answer(self.model, embeddings, protocol)
        weight = self.protocol.plain_weight
        answer = pd.DataFrame(
            {"lat": prediction.lat, "lon": prediction.lon, "spread_km": prediction.spread_km, "region_km": region}
        )
        if top_k > 0:
            lat, lon, probability = self.model.ranked(drawn, top_k, plain_weight=weight)
            answer["top_lat"], answer["top_lon"] = list(lat.astype(float)), list(lon.astype(float))
            answer["top_probability"] = list(probability.astype(float))
        return answer

    def _embeddings(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, views, D): each row's embedding as given, or its image embedded in the protocol's views."""
        present = [c for c in INPUT_COLUMNS if c in frame.columns]
        if not present:
            raise ValueError(f"the input needs one of the columns {', '.join(INPUT_COLUMNS)}")
        rows: list[np.ndarray | None] = [None] * len(frame)
        images, keys, at = [], [], []
        for i, (_, row) in enumerate(frame[present].iterrows()):
            given = [c for c in present if _is_given(row[c])]
            if len(given) != 1:
                raise ValueError(f"row {i}: give exactly one of {', '.join(INPUT_COLUMNS)} (got {given or 'none'})")
            column = given[0]
            if column == "embedding":
                vector = np.stack([np.asarray(v, dtype=np.float32) for v in row[column]])
                rows[i] = vector if vector.ndim == 2 else vector[None, :]
            else:
                image, key = _read(row[column], column, i)
                images.append(image)
                keys.append(key)
                at.append(i)
        if images:  # views seeded by content: the same image gets the same answer, sent as bytes or path
            views = self._encoder().embed_views(images, keys, self.protocol.views, self.protocol.imagery)
            for k, i in enumerate(at):
                rows[i] = views[k]
        counts = {r.shape[0] for r in rows}
        if len(counts) > 1:  # rows with different view counts: keep the plain view, common to all
            rows = [r[:1] for r in rows]
        return np.stack(rows).astype(np.float32)

    def _encoder(self):
        if self.encoder is None:
            from locdiff_pipeline.data.image_encoder import recorded_encoder

            self.encoder = recorded_encoder(self.model.encoder, self.encoder_checkpoint, self.model.device)
        return self.encoder


def _is_given(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return not (isinstance(value, str | bytes) and len(value) == 0)


def _read(value, column: str, row: int):
    """(decoded image, its content hash) from bytes or a path, or ValueError naming the row and the reason."""
    from locdiff_pipeline.data.image_io import ImageDecodeError, decode_image, read_image_bytes, sha256_bytes

    try:
        if column == "path":
            data, name = read_image_bytes(value), str(value)
        elif isinstance(value, str):  # a JSON request carries bytes as base64 text
            data, name = _from_base64(value, row), "image bytes"
        else:
            data, name = bytes(value), "image bytes"
        return decode_image(data, name), sha256_bytes(data)
    except ImageDecodeError as error:
        raise ValueError(f"row {row}: {error}") from None


def _from_base64(text: str, row: int) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"row {row}: the image is text but not base64-encoded bytes") from None
