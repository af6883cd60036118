"""The promotion gate: register a finetuned encoder in the MLflow Model Registry and decide whether
it becomes the ``champion`` (what consumers load) or stays a ``challenger``.

Every decision is against a reference, measured on the *same held-out images*: the current
champion (re-scored on this run's data), or — on an empty registry — the candidate's own base
encoder, so a finetune that changed nothing measurable is held and says so. The images are the
target's and the source's "val" splits, which no training step reads (:data:`uft.data.ingest.SPLITS`);
test labels are never read here.

The decision (:func:`decide`) is pure. Rules, in order (each failed rule is one reason, recorded as
a version tag):

1. Never a collapsed, diverged or degenerate encoder (:func:`uft.evaluate.label_free.collapsed`:
   constant or rank-one features, view retrieval at chance, or no better than untrained encoders of
   the same architecture where the reference is clearly better).
2. Never automatically over a champion of another domain (:func:`domain_shift`).
3. ``source_retention`` may drop by at most ``retention_tolerance``.
4. No scored row may have been trained on by either encoder compared: each registered version
   records the datasets and split rule it trained on (tag ``uft.lineage``, :mod:`uft.lineage`);
   the gate leaves out every val row whose content is in either encoder's training split, and a
   reference whose target training rows cannot be established (no record and its old dataset
   gone, another image size) is a "cannot tell": held, never guessed. Encoders registered under
   the old per-position split are handled the same way, from their ``uft.target_uri`` tag.
5. The gain must clear the smallest gain worth a new version with 95 % confidence: both encoders'
   per-row outcomes on the same val rows are bootstrapped together (rows, and label draws of the
   few-shot probe) → a 90 % interval of the gain; promote only when its lower bound exceeds
   ``MIN_PROBE_GAIN`` (val probe, with val labels) or ``MIN_GATE_GAIN`` (gate score, without).

Every decision records its interval and the lineage check (``uft promote --explain RUN_ID``, the
report, the version's and the promote run's MLflow tags ``uft.gain.*``, ``uft.lineage.check``).

Registry writes are idempotent: a version is keyed by the encoder's content hash (tag
``uft.encoder_sha``), so a retried step — or an identical rerun whose finetuning was a cache hit —
finds its version instead of adding one. The tags are written in the same call that creates the
version, so there is no window in which a version exists without its key. Aliases are moved with
``set_registered_model_alias``, which is itself idempotent. Everything goes through
``MlflowClient``: the same code works against a local sqlite store and a tracking server with a
Postgres backend (the registry lives in the tracking server's backend store).

Where each part lives: the rule (:mod:`.policy`), what is measured (:mod:`.signals`), the registry
(:mod:`.registry`), the pipeline step (:mod:`.step`), and saying why (:mod:`.explain`).
"""

from __future__ import annotations

from uft.promote.explain import explain, explain_lines, manual_promote, promotion_summary, report_section
from uft.promote.policy import (CHALLENGER, CHAMPION, DEFAULT_MODEL, DOMAIN_SHIFT_ACCURACY, FLOOR_SEEDS,
                                MIN_GATE_GAIN, MIN_PROBE_GAIN, NOISE, VAL_SHOTS, Decision, GatePolicy, decide,
                                paired_gain)
from uft.promote.registry import (apply, find_version, load_champion, log_encoder_model, preprocessing, register,
                                  stored_signals, version_by_alias)
from uft.promote.signals import GateData, domain_shift, gate_data, untrained_like
from uft.promote.step import promote_step

__all__ = ["CHALLENGER", "CHAMPION", "DEFAULT_MODEL", "DOMAIN_SHIFT_ACCURACY", "FLOOR_SEEDS", "MIN_GATE_GAIN",
           "MIN_PROBE_GAIN", "NOISE", "VAL_SHOTS", "paired_gain",
           "Decision", "GateData", "GatePolicy", "apply", "decide", "domain_shift", "explain", "explain_lines",
           "find_version", "gate_data", "load_champion", "log_encoder_model", "manual_promote", "preprocessing",
           "promote_step", "promotion_summary", "register", "report_section", "stored_signals", "untrained_like",
           "version_by_alias"]
