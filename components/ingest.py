from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(spec: str, store_uri: str, role: str, image_size: int, channels: int, limit: int, test_fraction: float,
           seed: int, run_id: str, job_id: str, experiment: str, framing: str = "auto") -> NamedTuple("Outputs", [("dataset_uri", str), ("dataset_sha", str)]):
    """Raw images → Parquet shards + manifest in the store."""
    from uft.config import default_store_uri

    store_uri = store_uri or default_store_uri()  # "": s3://$UFT_BUCKET/uft (ConfigMap uft-config)
    from uft.steps import ingest as step
    from uft.tracking import run_key

    out = step(spec, store_uri, role=role, image_size=image_size, channels=channels, limit=limit,
               test_fraction=test_fraction, seed=seed, framing=framing, run_id=run_key(run_id, job_id), experiment=experiment)
    return (out["dataset_uri"], out["dataset_sha"])
