"""The MLflow pyfunc flavour of a LocDiff checkpoint: serves predictions from image embeddings.

`mlflow.pyfunc.load_model('models:/locdiff@champion').predict(df)` takes a DataFrame with an
`embedding` column (one vector per row, or a list of view vectors) and returns lat, lon, spread_km.
It is logged as models-from-code (MODEL_CODE), and refuses a checkpoint whose files changed since it
was logged (their SHA-256 is in the model config).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from locdiff_pipeline.method.protocol import Protocol

CHECKPOINT_ARTIFACT = "checkpoint"
DIGESTS_CONFIG = "checkpoint_sha256"
MODEL_CODE = str(Path(__file__).with_name("pyfunc_code.py"))


def signature():
    """What the served model takes and returns: an `embedding` column (the image encoder's vector) in;
    lat, lon (degrees) and spread_km out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.double), "embedding")]),
        outputs=Schema([ColSpec(DataType.double, name) for name in ("lat", "lon", "spread_km")]),
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

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        embeddings = np.stack([np.asarray(v, dtype=np.float32) for v in model_input["embedding"]])
        samples = int((params or {}).get("samples", 1))
        protocol = Protocol.from_dict(self.model.metadata.get("protocol"))
        prediction = self.model.predict_embeddings(
            embeddings, samples=samples, rule=protocol.rule, plain_weight=protocol.plain_weight
        )
        return pd.DataFrame({"lat": prediction.lat, "lon": prediction.lon, "spread_km": prediction.spread_km})
