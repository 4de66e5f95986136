"""The LocDiff method: sphere geometry, the SHDD codec, the CS-UNet denoiser, diffusion, training,
prediction, metrics and baselines. Pure numpy/torch: nothing here imports Dagster, MLflow or the
warehouse, so notebooks and other pipelines can use the method on its own."""
