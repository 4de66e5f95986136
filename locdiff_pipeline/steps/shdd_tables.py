"""The `shdd` tables: SHDD_L coefficients of every ingested location, one partition per L and shard.

Precomputed once as the article does (an embedding lookup table for training); `shdd.encode` is the
only code that computes them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from locdiff_pipeline.data import shards
from locdiff_pipeline.data.ingest import IMAGES_TABLE
from locdiff_pipeline.data.warehouse import Warehouse, fingerprint
from locdiff_pipeline.method import shdd

SHDD_TABLE = "shdd"
SHDD_VERSION = 1


def build_shdd_table(
    warehouse: Warehouse, dataset: str, shard: str, L: int, *, batch_rows: int = 50000, force: bool = False
) -> dict:
    """Write shdd/dataset=NAME/L=L/shard=KEY (float32 coefficients), streaming the images shard in batches."""
    images = warehouse.manifest(IMAGES_TABLE, dataset=dataset, shard=shard)
    if images is None:
        raise FileNotFoundError(f"shard {shard} of dataset {dataset!r} is not ingested yet")
    key = fingerprint(SHDD_VERSION, images["fingerprint"], L)
    if not force and warehouse.is_current(SHDD_TABLE, key, dataset=dataset, L=L, shard=shard):
        return {**warehouse.manifest(SHDD_TABLE, dataset=dataset, L=L, shard=shard), "cached": True}
    width = shdd.num_coefficients(L)
    with warehouse.write_partition(
        SHDD_TABLE, {"fingerprint": key, "L": L}, dataset=dataset, L=L, shard=shard
    ) as writer:
        for batch in warehouse.iter_batches(
            IMAGES_TABLE, batch_rows, columns=["image_id", "split", "lat", "lon"], dataset=dataset, shard=shard
        ):
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
    return {**warehouse.manifest(SHDD_TABLE, dataset=dataset, L=L, shard=shard), "cached": False}


def load_shdd(warehouse: Warehouse, dataset: str, L: int) -> dict[str, np.ndarray]:
    """image_id -> coefficients for one L."""
    table = shards.read(warehouse, SHDD_TABLE, dataset, L=L)
    width = shdd.num_coefficients(L)
    values = table["coefficients"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return dict(zip(table["image_id"].to_pylist(), values))
