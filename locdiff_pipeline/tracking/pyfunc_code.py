"""MLflow models-from-code entry point: MLflow runs this file to build the pyfunc model when a logged or
registered LocDiff version is loaded, so loading unpickles no Python object (the weights themselves are a
plain state dict loaded with weights_only=True)."""

import mlflow.models

from locdiff_pipeline.tracking.pyfunc_model import LocDiffPyfunc

mlflow.models.set_model(LocDiffPyfunc())
