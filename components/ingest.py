from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(spec: str, fingerprint: str, store_uri: str, role: str, image_size: int, channels: int, limit: int,
           test_fraction: float, seed: int, run_id: str, experiment: str, dataset: dsl.Output[dsl.Dataset],
           framing: str = "auto", val_fraction: float = 0.2):
    """Raw images → Parquet shards + manifest in the store; ``dataset`` points to the manifest.

    ``fingerprint`` (the fingerprint step's output) is what makes this step cacheable: same files,
    same inputs, same cache key; new files, a new key."""
    from uft.lineage import emit
    from uft.steps import ingest as step
    from uft.tracking import pod_run_key

    out = step(spec, store_uri, role=role, image_size=image_size, channels=channels, limit=limit,
               test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, framing=framing, fingerprint=fingerprint,
               run_id=pod_run_key(run_id), experiment=experiment)
    emit(dataset.path, dataset.metadata, out["dataset_uri"], out["dataset_sha"])
