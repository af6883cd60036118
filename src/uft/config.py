"""The run configuration: every pipeline parameter, validated in one place.

The same model backs `uft run` flags, the KFP pipeline parameters and MLflow params, so a bad value
is caught before anything runs, with a message naming the field and the valid range or choices.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uft.choices import (BUILTIN_ENCODERS, BUILTIN_HOLISTIC_METHODS, BUILTIN_SSL_METHODS,  # noqa: F401
                         ENCODER_FAMILIES, FRAMINGS, MIX_OPS, MIX_PAIRINGS, REPLAY_RULES, WEIGHT_SUFFIXES, one_of)
from uft.errors import UftError
from uft.store import DEFAULT_BUCKET, default_bucket, default_store_uri  # noqa: F401  (re-exported)

CHOICES = {"replay_rule": REPLAY_RULES, "mix_op": MIX_OPS, "mix_pairing": MIX_PAIRINGS, "framing": FRAMINGS}


def _csv_ints(value: str, field: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{field} must be comma-separated integers, got {value!r}") from None


class RunConfig(BaseModel):
    """Pipeline parameters (flat, so they map 1:1 onto KFP parameters and MLflow params)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("mnist", description="bundled name, ImageFolder dir, s3:// prefix or manifest URI")
    target: str = Field("optdigits", description="same forms as source")
    image_size: int = Field(16, ge=4, le=1024)
    channels: int = Field(1, ge=1, le=3)
    source_limit: int = Field(0, ge=0, description="0 = all source images")
    target_limit: int = Field(0, ge=0, description="0 = all target images")
    target_test_fraction: float = Field(0.5, gt=0, lt=1)
    source_test_fraction: float = Field(0.1, gt=0, lt=1, description="held out for source retention")
    target_val_fraction: float = Field(0.2, ge=0, lt=1, description="share of the non-test target rows held out "
                                       "from finetuning for decisions (promotion signals, γ, hyperparameters)")
    source_val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the non-test source rows held out "
                                       "from pretraining for decisions (source retention in the promotion gate)")
    framing: str = Field("auto", description="auto | content_box | keep: crop images to their content at ingest")

    encoder: str = "tiny"
    encoder_width: int = Field(32, ge=4, le=1024)
    pretrained_encoder: str = Field("", description="encoder manifest URI; skips pretraining when set")
    encoder_weights: str = Field("", description="checkpoint for `encoder` (.pth/.pt/.safetensors path or s3:// URI, "
                                 "or models:/name@alias | models:/name/version); skips pretraining when set")
    pretrain_method: str = "simclr"
    pretrain_steps: int = Field(300, ge=1)
    ssl_method: str = "simclr"
    finetune_steps: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(2e-3, gt=0, le=10)
    radreg_weight: float = Field(0.0, ge=0, description="μ of RadReg during finetuning, on the batch's target rows")
    pretrain_radreg_weight: float = Field(0.0, ge=0, description="μ of RadReg added to the pretraining loss, as its "
                                          "paper uses it (uft.ssl.radreg); 0 = off")
    pretrain_radreg_form: str = Field("closed", description="closed (linear heads, raw features) | adversarial "
                                      "(a ReLU head by gradient ascent, standardised features)")
    pretrain_radreg_target: str = Field("", description="manifest URI of the target dataset RadReg is estimated on "
                                        "(its train split, labels unread); needed when pretrain_radreg_weight > 0")
    checkpoint_every: int = Field(50, ge=1)

    replay_rule: str = "uniform"
    replay_size: int = Field(2000, ge=0, description="|S|, the fixed replay set; 0 disables replay")
    replay_ratio: float = Field(0.5, ge=0, le=1, description="⌈ρ·B⌉ replayed images per B target images")
    mix_op: str = "none"
    mix_alpha: float = Field(1.0, gt=0)
    mix_fraction: float = Field(0.5, ge=0, le=1)
    mix_pairing: str = "target_source"

    label_shots: str = Field("1,5,10", description="few-label probe sizes, labels per class")
    probe_draws: int = Field(5, ge=1, le=100)
    knn_k: int = Field(20, ge=1)
    holistic_seen: str = Field("0,1,2,3,4", description="target classes with training labels")
    holistic_methods: str = Field("adabn,naive,frozen_head", description="comma-separated holistic methods")
    holistic_steps: int = Field(150, ge=1)
    holistic_source_steps: int = Field(600, ge=1, description="steps of the source classifier's supervised training")
    seed: int = Field(0, ge=0)
    registered_model: str = Field("uft-encoder", min_length=1, description="MLflow Model Registry name of the encoder")
    promote_margin: float = Field(0.08, ge=0, le=1, description="noise band of the label-free gate score (2σ of its "
                                  "measured seed spread): the collapse floor's and the 'changed nothing' reading's; "
                                  "promoting needs the paired interval's lower bound above the smallest gain worth a "
                                  "version (uft.promote.policy)")
    retention_tolerance: float = Field(0.026, ge=0, le=1, description="max drop of source k-NN accuracy (source val "
                                       "split) when promoting; 3σ of its measured seed spread")

    @field_validator(*CHOICES)
    @classmethod
    def _choice(cls, v: str, info) -> str:
        return one_of(v, CHOICES[info.field_name], info.field_name)

    @field_validator("label_shots", "holistic_seen")
    @classmethod
    def _ints(cls, v: str, info) -> str:
        vals = _csv_ints(v, info.field_name)
        if not vals or min(vals) < 0:
            raise ValueError(f"{info.field_name} needs non-negative integers, got {v!r}")
        return v

    @model_validator(mode="after")
    def _names(self) -> "RunConfig":
        for field in ("pretrain_method", "ssl_method"):  # a name, or name:knob=value,... (e.g. act:views=4)
            spec = getattr(self, field)
            if spec in BUILTIN_SSL_METHODS:
                continue
            from uft.ssl.base import method_names, parse_method_spec

            if spec.partition(":")[0] not in method_names():
                raise ValueError(f"unknown {field} {spec!r}; choose one of {', '.join(method_names())}")
            try:
                parse_method_spec(spec)  # the knobs are the method's constructor keywords
            except UftError as e:
                raise ValueError(f"{field}: {e}") from None
        family, sep, _ = self.encoder.partition(":")
        if sep and family in ENCODER_FAMILIES:  # timm:<name> / torchvision:<name>: the library knows the name
            from uft.models.library import check_name

            try:
                check_name(self.encoder)
            except UftError as e:
                raise ValueError(f"encoder: {e}") from None
        elif self.encoder not in BUILTIN_ENCODERS:
            from uft.models.encoders import encoder_names

            if self.encoder not in encoder_names():
                raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(encoder_names())}, "
                                 f"{', '.join(f + ':<name>' for f in ENCODER_FAMILIES)}")
        if self.encoder_weights:
            from uft.models.weights import weights_form_problem

            if problem := weights_form_problem(self.encoder_weights):
                raise ValueError(f"encoder_weights: {problem}")
            if self.pretrained_encoder:
                raise ValueError("encoder_weights and pretrained_encoder both set: pass one (a checkpoint, or a uft "
                                 "encoder manifest)")
        if self.channels == 2:
            raise ValueError("channels must be 1 (grey) or 3 (RGB)")
        if self.pretrain_radreg_form not in ("closed", "adversarial"):
            raise ValueError(f"pretrain_radreg_form {self.pretrain_radreg_form!r}: use closed or adversarial")
        if self.pretrain_radreg_weight > 0:
            if not self.pretrain_radreg_target:
                raise ValueError("pretrain_radreg_weight > 0 needs pretrain_radreg_target: the target dataset's manifest "
                                 "URI (e.g. the target dataset an earlier run ingested), or pretrain_radreg_weight=0")
            if self.pretrained_encoder or self.encoder_weights:
                raise ValueError("pretrain_radreg_weight > 0 with pretraining skipped (pretrained_encoder / "
                                 "encoder_weights set): drop one of them")
        for m in self.methods():  # a fixed list (no registry): uft.transfer.holistic dispatches these
            one_of(m, BUILTIN_HOLISTIC_METHODS, "holistic method")
        return self

    def shots(self) -> list[int]:
        return _csv_ints(self.label_shots, "label_shots")

    def seen(self) -> list[int]:
        return _csv_ints(self.holistic_seen, "holistic_seen")

    def methods(self) -> list[str]:
        return [m.strip() for m in self.holistic_methods.split(",") if m.strip()]


def validate_config(values: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig`, turning pydantic's report into one line per problem."""
    try:
        return RunConfig(**values)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if err["type"] != "extra_forbidden" else
                            f"{loc}: unknown parameter; valid ones are {', '.join(RunConfig.model_fields)}")
        raise UftError("invalid config — " + "; ".join(problems)) from None
