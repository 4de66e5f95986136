"""MLflow glue: the project's tracking backend and model registry, and the pyfunc flavour of a checkpoint."""
