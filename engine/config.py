"""Engine configuration: one typed place for thresholds, paths and the tracking store.

Why a file and not flags: risk thresholds, value tiers and drift alert levels are business decisions
that an operator changes without a release. Defaults ship in `engine/defaults/config.yaml`; a
`retain.yaml` in the working directory, a file named by `RETAIN_CONFIG`, or `--config FILE` overrides
any subset of it (deep-merged). Environment variable `MLFLOW_TRACKING_URI` overrides the store.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.data.io import read_yaml_mapping
from engine.errors import ConfigError, mask_secrets

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RiskGrades(_Strict):
    """Churn-probability cut-offs: >= high is 'high', >= medium is 'medium', else 'low'.

    With `capacity_high` / `capacity_medium` set, grades follow what the channels can handle instead: the
    top N subscribers by probability are high, the next M medium.

    `mode: emp`: the 'high' cut-off is the churn model's EMP threshold (expected maximum profit, Verbraken et
    al. 2013): the churn probability above which contacting pays, i.e. the top of the ranking whose share EMP
    implies, measured on the model's hold-out at training (model version tag `emp_threshold`; `retain uplift
    emp --save` sets it for older versions). `medium` stays, or becomes half the EMP threshold when it is
    not below it (engine.decision.run.resolve_risk_grades).
    """

    mode: Literal["thresholds", "emp"] = "thresholds"
    capacity_high: int | None = Field(None, gt=0)
    capacity_medium: int | None = Field(None, ge=0)
    high: float = Field(0.5, gt=0, lt=1)
    medium: float = Field(0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> RiskGrades:
        if self.mode == "emp" and self.capacity_high is not None:
            raise ValueError("mode 'emp' sets the high cut-off from the model; it cannot be combined with "
                             "capacity_high")
        if self.medium >= self.high:
            raise ValueError(f"medium ({self.medium}) must be below high ({self.high})")
        return self


class ValueTiers(_Strict):
    """Value tier method: 'kmeans' (RFM clusters fitted with the model) or 'thresholds' on 3-month ARPU."""

    method: Literal["kmeans", "thresholds"] = "kmeans"
    high: float = Field(80.0, gt=0)
    medium: float = Field(40.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ValueTiers:
        if self.medium >= self.high:
            raise ValueError(f"medium ({self.medium}) must be below high ({self.high})")
        return self


class Lifecycle(_Strict):
    """Tenure and usage-trend boundaries of the lifecycle stages new / growth / mature / decline."""

    new_months: int = Field(6, ge=1)
    growth_months: int = Field(24, ge=1)
    decline_usage_drop: float = Field(0.3, gt=0, lt=1, description="Usage fall month on month that means decline")


class Training(_Strict):
    trials: int = Field(20, ge=1)
    timeout_seconds: float | None = Field(None, gt=0)
    folds: int = Field(3, ge=2)
    holdout_share: float = Field(0.2, gt=0, lt=0.9)
    seed: int = 42
    max_iterations: int = Field(1000, ge=10)
    early_stopping_rounds: int = Field(50, ge=5)
    reference_sample_rows: int = Field(50_000, ge=100, description="Rows logged with the model as drift reference")


class Drift(_Strict):
    """Alert thresholds for `retain drift`."""

    drift_share: float = Field(0.3, gt=0, le=1, description="Share of drifted features that raises an alert")
    feature_threshold: float | None = Field(None, gt=0, description="Per-feature threshold; empty: Evidently default")
    sample_rows: int = Field(200_000, ge=1000, description="Current rows sampled (seeded) above this size")
    auc_drop: float = Field(0.05, gt=0, lt=1, description="ROC AUC fall vs training hold-out that raises an alert")
    score_threshold: float = Field(0.1, gt=0, description="Churn-probability drift (normed Wasserstein distance) "
                                                          "that raises an alert")
    risk_mix_threshold: float = Field(0.1, gt=0, description="Risk-grade mix shift (PSI) that raises an alert")
    seed: int = Field(0, description="Seed of the row sample taken above sample_rows")
    top_features: int = Field(5, ge=0, description="Alert when any of the model's k most important inputs "
                                                   "drifts (0: share rule only)")
    webhook_timeout: float = Field(10.0, gt=0, description="Seconds a --webhook connect or single read may take")
    webhook_deadline_seconds: float = Field(10.0, gt=0, description="Seconds the whole --webhook delivery may "
                                                                    "take, however slowly the receiver answers")
    experiment: str = Field("monitoring", min_length=1, description="MLflow experiment of the monitoring runs")


class Governance(_Strict):
    """Promotion gate: a candidate may be at most this much worse in hold-out ROC AUC than the holder."""

    auc_tolerance: float = Field(0.005, ge=0, lt=1)


class ContactRules(_Strict):
    """Contact law: fatigue limit, cool-down after a refusal, quiet hours for calls."""

    max_contacts_30d: int = Field(2, ge=0, description="Outbound contacts allowed per subscriber in 30 days")
    max_contacts_per_day: int | None = Field(
        None, ge=1, description="Contacts (any channel) after which a subscriber gets no outbound contact again "
                                "the same day; empty means no daily limit (`retain serve` uses 1 when empty)")
    cooldown_days_after_decline: int = Field(30, ge=0)
    quiet_hours_start: str = Field("20:00", pattern=r"^\d{2}:\d{2}$")
    quiet_hours_end: str = Field("09:00", pattern=r"^\d{2}:\d{2}$")


class ControlGroup(_Strict):
    """A stable random share of eligible subscribers gets no offer, so effects can be measured."""

    share: float = Field(0.1, ge=0, lt=1)
    salt: str = "retain-control"


class Channel(_Strict):
    cost: float = Field(ge=0, description="Cost of one contact on this channel")
    daily_capacity: int | None = Field(None, ge=0, description="Contacts the channel can handle per run; "
                                                               "0 closes the channel, empty means no limit")


class Arbitration(_Strict):
    """Expected net value = P(churn) x P(accept) x value kept x horizon - offer cost - channel cost."""

    horizon_months: float = Field(6, gt=0)
    budget: float | None = Field(None, ge=0, description="Total offer + channel cost allowed per run; empty: none")
    acceptance_default: float = Field(0.10, gt=0, le=1, description="P(accept) when nothing more specific is set")
    acceptance: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="offer id -> {reason or 'default': P(accept)}")

    @model_validator(mode="after")
    def _rates(self) -> Arbitration:
        for offer, rates in self.acceptance.items():
            for reason, rate in rates.items():
                if not 0 < rate <= 1:
                    raise ValueError(f"acceptance rate {offer}.{reason} = {rate} must be in (0, 1]")
        return self

    def prior_acceptance(self, offer_id: np.ndarray, reason: np.ndarray) -> np.ndarray:
        """Configured P(accept | offer, reason): per reason first, then the offer's default, then the global one.

        Here, beside the figures, because both arbitration (deciding) and learning (shrinking measured rates
        toward the prior) need the same answer.
        """
        return offer_prior_acceptance(offer_id, reason, self.acceptance, self.acceptance_default)


def offer_prior_acceptance(offer_id: np.ndarray, reason: np.ndarray, offer_priors: dict[str, dict[str, float]],
                           default: float) -> np.ndarray:
    """Prior P(accept) per (offer, reason) from the offers' `acceptance:` (the reason's rate, else the offer's
    'default', else `default`). One function for arbitration and for learning, which shrinks measured rates
    toward exactly the prior decide uses."""
    prior = np.full(len(offer_id), default, dtype=float)
    for offer, rates in offer_priors.items():
        if not rates:
            continue
        is_offer = offer_id == offer
        if "default" in rates:
            prior[is_offer] = rates["default"]
        for r, rate in rates.items():
            if r != "default":
                prior[is_offer & (reason == r)] = rate
    return prior



class Settings(_Strict):
    tracking_uri: str = DEFAULT_TRACKING_URI
    model_name: str = "churn"
    policy_dir: str = "policies"
    store_url: str | None = Field(None, description="Decision store (SQLAlchemy URL); default store/retain.db "
                                                    "next to mlruns/")
    risk_grades: RiskGrades = RiskGrades()
    value_tiers: ValueTiers = ValueTiers()
    lifecycle: Lifecycle = Lifecycle()
    training: Training = Training()
    drift: Drift = Drift()
    governance: Governance = Governance()
    contact: ContactRules = ContactRules()
    control_group: ControlGroup = ControlGroup()
    arbitration: Arbitration = Arbitration()
    channels: dict[str, Channel] = Field(default_factory=dict, description="Contact channel -> cost, capacity")
    reasons: dict[str, list[str]] = Field(default_factory=dict, description="Reason family -> features")
    explain_risk_grades: list[Literal["high", "medium", "low"]] = Field(
        default_factory=lambda: ["high", "medium"], description="Risk grades whose churn reason is computed")
    reason_labels: dict[str, str] = Field(default_factory=dict, description="Reason family -> words")

    @model_validator(mode="after")
    def _usable_stores(self) -> Settings:
        check_store_uri(self.tracking_uri, "tracking URI", TRACKING_SCHEMES)
        if self.store_url:
            check_store_uri(self.store_url, "decision store URL", STORE_SCHEMES)
        return self

    @model_validator(mode="after")
    def _known_channels(self) -> Settings:
        from engine.vocabulary import CHANNELS

        unknown = sorted(set(self.channels) - set(CHANNELS))
        if unknown:
            raise ValueError(f"unknown channel(s) {unknown}; channels are {', '.join(CHANNELS)}")
        return self


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SQLITE_HEADER = b"SQLite format 3\x00"


def check_store_uri(uri: str, what: str, schemes: tuple[str, ...]) -> None:
    """A URI whose scheme MLflow or SQLAlchemy knows; an existing SQLite file must be an SQLite database.

    Checked when settings are read, so a typo or a garbage file is one line before any work starts.
    """
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in schemes:
        raise ValueError(f"{what} '{mask_secrets(uri)}' has an unknown scheme '{scheme or uri}' "
                         f"(use one of {', '.join(s + '://' for s in schemes)})")
    if scheme == "sqlite":
        path = Path(uri.split("://", 1)[1].removeprefix("/")) if uri.startswith("sqlite:///") else None
        if path is not None and path.is_dir():
            raise ValueError(f"{what} '{uri}' names a folder, not a database file")
        if path is not None and path.is_file() and path.stat().st_size:
            with path.open("rb") as fh:
                if fh.read(16) != SQLITE_HEADER:
                    raise ValueError(f"{what} '{uri}': '{path}' is not an SQLite database (hint: point at another "
                                     f"file, or move this one away to start a new store)")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        replace_whole = key in ("reasons", "reason_labels", "acceptance")
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not replace_whole:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    text = resources.files("engine.defaults").joinpath("config.yaml").read_text()
    return yaml.safe_load(text)


def load_settings(path: str | Path | None = None, *, tracking_uri: str | None = None) -> Settings:
    """Defaults, then retain.yaml / RETAIN_CONFIG / `path`, then MLFLOW_TRACKING_URI, then `tracking_uri`."""
    data = dict(_defaults())
    source = "defaults"
    candidate = Path(path) if path else (Path(os.environ["RETAIN_CONFIG"]) if os.environ.get("RETAIN_CONFIG")
                                         else Path("retain.yaml"))
    if path or os.environ.get("RETAIN_CONFIG") or candidate.exists():
        data = _deep_merge(data, read_yaml_mapping(candidate, what="config file"))
        source = str(candidate)
    uri_source = source
    if os.environ.get("MLFLOW_TRACKING_URI"):
        data["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
        uri_source = "MLFLOW_TRACKING_URI"
    if tracking_uri:
        data["tracking_uri"] = tracking_uri
        uri_source = "--tracking-uri"
    try:
        return Settings(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith("tracking URI"):
            source = uri_source
        raise ConfigError(f"{source}: setting '{field}': {msg}" if field else f"{source}: {msg}") from None
