"""Holistic transfer (METHODS.md §3; arXiv 2311.01420 and its calibration follow-up 2409.16223).

A source classifier is an encoder (images ``(N, C, H, W)`` float in [0, 1] → ``(N, D)``) plus an
``nn.Linear`` head over all ``num_classes`` classes. The target training set is labelled only for
the seen classes ``S``; the goal is to adapt to the target domain without destroying the unseen
classes ``U = C \\ S``. Evaluation uses the full target test set.

Methods (:data:`HOLISTIC_METHODS`, dispatched through :data:`ADAPTERS`):

- ``source``: no adaptation. ``adabn``: BatchNorm statistics re-estimated on (unlabelled,
  seen-class) target training images.
- ``naive``: SGD on cross-entropy over all C logits with the seen-class data.
- ``frozen_head``: naive with the head left out of the optimiser (bit-identical afterwards).
- ``lolsgd``: leave-out local SGD, see :func:`_adapt_lolsgd`.
- ``distill``: naive + ``T²·KL(softmax(z_src/T) ‖ softmax(z/T))`` from the frozen source model,
  optionally only over the unseen logits (``distill_selective``), plus optional feature MSE.
- ``rank_reg``: naive − ``rank_reg_weight ·`` :func:`feature_rank_entropy` of the batch features.
- ``oracle``: naive on data of *all* classes (the only method allowed to see unseen labels).

Modifiers compose with the SGD methods: ``frozen_head=True``, ``distill_weight > 0`` /
``feature_distill_weight > 0``, ``rank_reg_weight > 0`` (e.g. ``method="lolsgd", frozen_head=True,
distill_weight=1``), and post-hoc ``calibration`` ("alg" or "pcv") for every method.

Label hygiene is structural: :func:`run_holistic` filters the target training set to the seen
classes on entry (:func:`filter_seen`); everything except the ``oracle`` finetune and the NCM
analysis probe receives only that filtered set, and :func:`finetune` refuses unseen labels for
any method but ``oracle``.

Modules: :mod:`.config` (names, :class:`HolisticConfig`, input checks), :mod:`.training` (the shared
SGD loop), :mod:`.source` (source classifier, AdaBN, start check), :mod:`.methods` (the adapters and
:func:`finetune`), :mod:`.calibration` (ALG, PCV), :mod:`.run` (:func:`run_holistic`). The names
below are the public API; import them from here.
"""

from __future__ import annotations

from uft.transfer.holistic.config import (  # noqa: F401
    BatchHook,
    CALIBRATIONS,
    HOLISTIC_METHODS,
    HolisticConfig,
    SOURCE_RECIPE,
    filter_seen,
    make_config,
)
from uft.transfer.holistic.training import (  # noqa: F401
    feature_rank_entropy,
    predict,
)
from uft.transfer.holistic.source import (  # noqa: F401
    CHANCE_MULT,
    MAX_CLASS_SHARE,
    SOURCE_AUGMENT,
    adabn,
    check_start,
    start_check,
    start_warning,
    train_source_classifier,
)
from uft.transfer.holistic.methods import (  # noqa: F401
    ADAPTERS,
    Adapter,
    finetune,
)
from uft.transfer.holistic.calibration import (  # noqa: F401
    apply_calibration,
    gamma_alg,
    gamma_pcv,
    pcv_halves,
    pick_gamma,
)
from uft.transfer.holistic.run import (  # noqa: F401
    run_holistic,
)
