"""The only kfp-aware part of ``uft``: run locally, compile, submit, schedule, trigger."""
