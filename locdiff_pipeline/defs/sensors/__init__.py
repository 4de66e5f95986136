"""Sensors, one module each: score new models, retrain on new data."""

from locdiff_pipeline.defs.sensors.evaluate_new_model import evaluate_new_model
from locdiff_pipeline.defs.sensors.retrain_on_new_data import retrain_on_new_data

ALL_SENSORS = [evaluate_new_model, retrain_on_new_data]
