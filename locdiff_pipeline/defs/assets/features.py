"""Features stage: frozen image-encoder embeddings (scene descriptors or CLIP) and SHDD coefficient tables,
per shard, for every catalog dataset."""

import functools
import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from locdiff_pipeline.data.ingest import IMAGES_TABLE
from locdiff_pipeline.defs import stages
from locdiff_pipeline.defs.assets.ingest import images
from locdiff_pipeline.defs.partitions import SHARDS, observe_each_shard, span
from locdiff_pipeline.defs.resources import DatasetsResource, EncoderResource, TrainingResource, WarehouseResource
from locdiff_pipeline.encoders.encoder_spec import DEFAULT_TEST_VIEWS
from locdiff_pipeline.encoders.image_encoder import build_encoder, encoder_note
from locdiff_pipeline.method.devices import resolve_device
from locdiff_pipeline.steps.image_embeddings import EMBEDDING_VERSION, build_embeddings
from locdiff_pipeline.steps.progress import Progress
from locdiff_pipeline.steps.shdd_tables import SHDD_VERSION, build_shdd_table

GROUP = stages.FEATURES


@asset(
    kinds={"pytorch", "parquet"},
    code_version=str(EMBEDDING_VERSION),
    group_name=GROUP,
    deps=[images],
    partitions_def=SHARDS,
    description=(
        "Frozen image-encoder vectors per shard (scene descriptors by default, or an open_clip model): the plain "
        "view for training images; the encoder resource's "
        f"test_views ({DEFAULT_TEST_VIEWS} by default) test-time views for "
        "validation and benchmark images (no flips for north-up imagery). Batched, on CUDA when present."
    ),
)
def image_embeddings(
    context: AssetExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource, encoder: EncoderResource
) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    device = str(resolve_device(encoder.device))
    load = functools.cache(
        lambda: build_encoder(encoder.spec(), device=device)
    )  # loaded once, at the first shard to embed
    specs = datasets.specs(store)
    total = sum(
        (store.manifest(IMAGES_TABLE, dataset=spec.name, shard=shard) or {}).get("rows", 0)
        for spec in specs
        for shard in context.partition_keys
    )
    progress = Progress(f"embedding shards {span(context.partition_keys)}", total, context.log.info, unit="images")
    keyed = [
        (
            shard,
            build_embeddings(
                store,
                spec.name,
                shard,
                encoder.spec(),
                test_views=encoder.test_views,
                imagery=spec.imagery,
                device=device,
                load=load,
                progress=progress.advance,
                workers=encoder.decode_workers,
            ),
        )
        for spec in specs
        for shard in context.partition_keys
    ]
    summaries = [summary for _, summary in keyed]
    observe_each_shard(
        context,
        {
            shard: {"shard": shard, "dagster/row_count": sum(s["rows"] for k, s in keyed if k == shard)}
            for shard in context.partition_keys
        },
    )
    identity = summaries[0]["encoder"]
    context.log.info(encoder_note(identity))
    return MaterializeResult(
        metadata={
            "shards": span(context.partition_keys),
            "rows": sum(s["rows"] for s in summaries),
            "dagster/row_count": sum(s["rows"] for s in summaries),
            "encoder": identity["label"],
            "encoder_pretrained": identity["is_pretrained"],
            "encoder_note": encoder_note(identity),
            "embed_dim": identity["embed_dim"],
            "test_views": summaries[0]["test_views"],
            "cached": all(s["cached"] for s in summaries),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(
    kinds={"numpy", "parquet"},
    code_version=str(SHDD_VERSION),
    group_name=GROUP,
    deps=[images],
    partitions_def=SHARDS,
    description="SHDD coefficient tables of every location, per dataset, shard and degree L.",
)
def shdd_tables(
    context: AssetExecutionContext, warehouse: WarehouseResource, datasets: DatasetsResource, training: TrainingResource
) -> MaterializeResult:
    store = warehouse.get()
    started = time.perf_counter()
    names = [entry.name for entry in datasets.get().entries]
    built = [
        build_shdd_table(store, name, shard, L) | {"shard": shard}
        for name in names
        for shard in context.partition_keys
        for L in training.degrees()
    ]
    observe_each_shard(
        context,
        {
            shard: {
                "shard": shard,
                "rows_per_L": MetadataValue.json(
                    {
                        str(L): sum(s["rows"] for s in built if s["L"] == L and s["shard"] == shard)
                        for L in training.degrees()
                    }
                ),
            }
            for shard in context.partition_keys
        },
    )
    return MaterializeResult(
        metadata={
            "shards": span(context.partition_keys),
            "degrees": MetadataValue.json(training.degrees()),
            "rows_per_L": MetadataValue.json(
                {str(L): sum(s["rows"] for s in built if s["L"] == L) for L in training.degrees()}
            ),
            "cached": all(s["cached"] for s in built),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
