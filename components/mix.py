from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def mix(store_uri: str, op: str, alpha: float, fraction: float,
        pairing: str) -> NamedTuple("Outputs", [("plan_uri", str), ("plan_sha", str)]):
    """Record the data-mixing plan the trainer applies on the fly."""
    from uft.config import default_store_uri

    store_uri = store_uri or default_store_uri()  # "": s3://$UFT_BUCKET/uft (ConfigMap uft-config)
    from uft.steps import mix_plan

    out = mix_plan(store_uri, op=op, alpha=alpha, fraction=fraction, pairing=pairing)
    return (out["plan_uri"], out["plan_sha"])
