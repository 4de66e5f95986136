"""The `shdd` tables: SHDD_L coefficients of every ingested location, one partition per L.

Precomputed once as the article does (an embedding lookup table for training); `shdd.encode` is the
only code that computes them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from locdiff_pipeline import shdd
from locdiff_pipeline.ingest import IMAGES_TABLE
from locdiff_pipeline.warehouse import Warehouse, fingerprint

SHDD_TABLE = "shdd"
SHDD_VERSION = 1


def build_shdd_table(warehouse: Warehouse, dataset: str, L: int, *, batch_rows: int = 50000, force: bool = False) -> dict:
    """Write shdd/dataset=NAME/L=L (float32 coefficients), streaming the images table in batches."""
    images = warehouse.manifest(IMAGES_TABLE, dataset=dataset)
    if images is None:
        raise FileNotFoundError(f"images for dataset {dataset!r} are not ingested yet")
    key = fingerprint(SHDD_VERSION, images["fingerprint"], L)
    if not force and warehouse.is_current(SHDD_TABLE, key, dataset=dataset, L=L):
        return {**warehouse.manifest(SHDD_TABLE, dataset=dataset, L=L), "cached": True}
    width = shdd.num_coefficients(L)
    with warehouse.write_partition(SHDD_TABLE, {"fingerprint": key, "L": L}, dataset=dataset, L=L) as writer:
        for batch in warehouse.iter_batches(IMAGES_TABLE, batch_rows, columns=["image_id", "split", "lat", "lon"], dataset=dataset):
            coefficients = shdd.encode(batch["lat"].to_numpy(), batch["lon"].to_numpy(), L, dtype=np.float32)
            writer.write(
                pa.table(
                    {
                        "image_id": batch["image_id"],
                        "split": batch["split"],
                        "coefficients": pa.FixedSizeListArray.from_arrays(pa.array(coefficients.reshape(-1)), width),
                    }
                )
            )
    return {**warehouse.manifest(SHDD_TABLE, dataset=dataset, L=L), "cached": False}


def load_shdd(warehouse: Warehouse, dataset: str, L: int) -> dict[str, np.ndarray]:
    """image_id -> coefficients for one L."""
    table = warehouse.read(SHDD_TABLE, dataset=dataset, L=L)
    width = shdd.num_coefficients(L)
    values = table["coefficients"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return dict(zip(table["image_id"].to_pylist(), values))
