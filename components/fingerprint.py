from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fingerprint(spec: str) -> str:
    """What identifies the data behind ``spec`` now (a listing, no decoding): ingest's cache input."""
    from uft.data.fingerprint import source_fingerprint

    return source_fingerprint(spec)
