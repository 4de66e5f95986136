"""The MLflow pyfunc flavour of a LocDiff checkpoint: serves predictions from image embeddings.

`mlflow.pyfunc.load_model('models:/locdiff@champion').predict(df)` takes a DataFrame with an
`embedding` column (one vector per row, or a list of view vectors) and returns lat, lon, spread_km.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from locdiff_pipeline.method.protocol import Protocol

CHECKPOINT_ARTIFACT = "checkpoint"


class LocDiffPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from locdiff_pipeline.method.model import LocDiffModel

        self.model = LocDiffModel.load(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        embeddings = np.stack([np.asarray(v, dtype=np.float32) for v in model_input["embedding"]])
        samples = int((params or {}).get("samples", 1))
        protocol = Protocol.from_dict(self.model.metadata.get("protocol"))
        prediction = self.model.predict_embeddings(
            embeddings, samples=samples, rule=protocol.rule, plain_weight=protocol.plain_weight
        )
        return pd.DataFrame({"lat": prediction.lat, "lon": prediction.lon, "spread_km": prediction.spread_km})
