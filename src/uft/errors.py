"""The one error type users see: a one-line message naming the input and the fix."""


class UftError(Exception):
    """Bad input or an unusable environment. ``str(err)`` is a single line meant for the user.

    Raise it with the offending input and what to do, e.g.
    ``UftError("target path /data/x does not exist: pass a directory of images or an s3:// prefix")``.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class TransientError(UftError):
    """An external service (object store, MLflow) failed after this process's own retries.

    Unlike plain :class:`UftError` (bad input: rerunning cannot help), running the step again
    later may succeed, so the local runner retries steps that fail with it (see
    :func:`uft.orchestrate.local.no_retry_on_bad_input`)."""
