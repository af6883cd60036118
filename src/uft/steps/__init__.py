"""The pipeline's steps as plain functions: what each KFP component calls, with no kfp in sight.

Every step is content-addressed: its cache key hashes its inputs' content hashes and its config,
and its outputs are recorded under ``cache/<step>/<key>.json`` *after* they are published. A rerun
with the same inputs finds the record and returns it without recomputing (and without a second
MLflow run, since runs are keyed by pipeline run id and step).

Where each lives: data (:mod:`.prepare`), training (:mod:`.train`), evaluation (:mod:`.evaluate`)
and the report (:mod:`.reporting`).
"""

from __future__ import annotations

from uft.steps.evaluate import HOLISTIC_PROTOCOL, holistic_eval, knn_eval, linear_eval
from uft.steps.prepare import ingest, mix_plan, subsample_source
from uft.steps.reporting import report
from uft.steps.train import finetune, pretrain

__all__ = ["HOLISTIC_PROTOCOL", "finetune", "holistic_eval", "ingest", "knn_eval", "linear_eval", "mix_plan", "pretrain",
           "report", "subsample_source"]
