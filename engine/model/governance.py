"""Model versions and aliases: what is registered, what serves, and moving the `champion` safely.

Why aliases (not stages): MLflow 3 deprecates stages. `champion` is what `retain decide` uses by
default, `challenger` a candidate under evaluation. Each alias move is recorded on the registered
model (`alias_history.<alias>`) with who/why, so `rollback` can return to the previous champion.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from dataclasses import dataclass
from typing import Any

from engine.config import Settings
from engine.errors import ModelError
from engine.model.registry import connect

KEY_METRICS = ("holdout_roc_auc", "holdout_pr_auc", "holdout_log_loss", "cv_roc_auc")


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    created: str
    run_id: str
    metrics: dict[str, float]
    tags: dict[str, str]

    def row(self) -> dict[str, Any]:
        return {"version": self.version, "aliases": ",".join(self.aliases), "created": self.created,
                **{k.removeprefix("holdout_"): self.metrics.get(k) for k in KEY_METRICS},
                "data": self.tags.get("data_fingerprint", "")[:12], "dataset": self.tags.get("dataset", ""),
                "code": self.tags.get("code_version", "")}


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise ModelError(f"no registered model named '{name}'", hint="train one with `retain train`") from None


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every version of the churn model, newest first, with aliases and key hold-out metrics."""
    client = connect(settings)
    registered = _registered(client, settings.model_name)
    alias_of: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        alias_of.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    out = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = dict(client.get_run(mv.run_id).data.metrics)
            except Exception:  # run deleted: show the version anyway
                metrics = {}
        created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
        out.append(VersionInfo(str(mv.version), sorted(alias_of.get(str(mv.version), [])), created,
                               mv.run_id or "", metrics, dict(mv.tags or {})))
    return out


def _history(registered, alias: str) -> list[dict[str, Any]]:
    raw = (registered.tags or {}).get(f"alias_history.{alias}")
    return json.loads(raw) if raw else []


def set_alias(settings: Settings, version: str, alias: str, *, reason: str = "", forced: bool = False) -> str | None:
    """Point `alias` at `version`; return the version it pointed at before (None if new)."""
    client = connect(settings)
    registered = _registered(client, settings.model_name)
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(settings.model_name, version)
    except MlflowException:
        raise ModelError(f"model '{settings.model_name}' has no version {version}",
                         hint="see `retain models list`") from None
    previous = (registered.aliases or {}).get(alias)
    client.set_registered_model_alias(settings.model_name, alias, version)
    history = _history(registered, alias)
    history.append({"version": str(version), "previous": None if previous is None else str(previous),
                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "by": getpass.getuser(),
                    "reason": reason, "forced": forced})
    client.set_registered_model_tag(settings.model_name, f"alias_history.{alias}", json.dumps(history[-50:]))
    client.set_model_version_tag(settings.model_name, version, f"promoted_to.{alias}",
                                 json.dumps({"reason": reason, "forced": forced}))
    return None if previous is None else str(previous)


# ---------------------------------------------------------------------------------------------
# compare, gated promotion, rollback
# ---------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    a: str
    b: str
    rows: int
    data: str
    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    ci_low: float
    ci_high: float
    pr_auc_a: float
    pr_auc_b: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def paired_bootstrap_auc(y, p_a, p_b, *, rounds: int = 500, seed: int = 0) -> tuple[float, float]:
    """95% interval of AUC(a) - AUC(b), resampling subscribers jointly so the pairing is kept."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y, p_a, p_b = np.asarray(y), np.asarray(p_a), np.asarray(p_b)
    n, diffs = len(y), []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(roc_auc_score(y[idx], p_a[idx]) - roc_auc_score(y[idx], p_b[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def _labelled(settings: Settings, loaded, data: str | None):
    """(frame, y, description): a labelled table to score both models on."""
    from engine.model.registry import reference_sample

    if data:
        from engine.data.labelled import load_training_table

        table = load_training_table(data, target=loaded.model.spec.get("target"))
        return table.frame, table.target.to_numpy(), data
    ref = reference_sample(settings, loaded)
    target = loaded.model.spec.get("target", "churn")
    return ref, ref[target].to_numpy(), f"hold-out of version {loaded.version}"


def compare(settings: Settings, a: str, b: str, *, data: str | None = None, rounds: int = 500) -> Comparison:
    """Score versions a and b on the same labelled rows (b's hold-out unless `data` is given)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from engine.model.registry import load_model

    model_a, model_b = load_model(settings, a), load_model(settings, b)
    frame, y, described = _labelled(settings, model_b, data)
    _check_same_inputs(model_a, model_b)
    p_a, p_b = model_a.predict_proba(frame), model_b.predict_proba(frame)
    lo, hi = paired_bootstrap_auc(y, p_a, p_b, rounds=rounds)
    auc_a, auc_b = float(roc_auc_score(y, p_a)), float(roc_auc_score(y, p_b))
    return Comparison(a=model_a.version or a, b=model_b.version or b, rows=len(y), data=described,
                      auc_a=auc_a, auc_b=auc_b, diff=auc_a - auc_b, ci_low=lo, ci_high=hi,
                      pr_auc_a=float(average_precision_score(y, p_a)), pr_auc_b=float(average_precision_score(y, p_b)))


def _input_schema(loaded) -> dict[str, str]:
    pipe = loaded.model.pipeline
    return {**{c: "categorical" for c in pipe.categorical}, **{c: "numeric" for c in pipe.numeric}}


def _check_same_inputs(a, b) -> None:
    sa, sb = _input_schema(a), _input_schema(b)
    if sa != sb:
        only_a = sorted(set(sa) - set(sb))
        only_b = sorted(set(sb) - set(sa))
        typed = sorted(c for c in set(sa) & set(sb) if sa[c] != sb[c])
        raise ModelError(f"versions {a.version} and {b.version} take different inputs "
                         f"(only in {a.version}: {only_a}; only in {b.version}: {only_b}; type differs: {typed})")


def promote(settings: Settings, version: str, alias: str = "champion", *, force: bool = False,
            reason: str = "", tolerance: float | None = None, data: str | None = None) -> tuple[str | None, str]:
    """Move `alias` to `version` unless it is worse than the current holder beyond tolerance or takes other inputs.

    Returns (previous version, verdict text). `force` (with a reason) overrides a refusal and is recorded.
    """
    from engine.model.registry import load_model

    tolerance = settings.governance.auc_tolerance if tolerance is None else tolerance
    if force and not reason.strip():
        raise ModelError("--force needs --reason TEXT", hint="say why the gate is overridden; it is recorded")
    client = connect(settings)
    current = (_registered(client, settings.model_name).aliases or {}).get(alias)
    verdict = f"no current '{alias}'"
    if current is not None and str(current) != str(version):
        candidate, holder = load_model(settings, str(version)), load_model(settings, str(current))
        try:
            _check_same_inputs(candidate, holder)
            cmp = compare(settings, str(version), str(current), data=data, rounds=200)
            verdict = (f"version {version} AUC {cmp.auc_a:.4f} vs {alias} version {current} {cmp.auc_b:.4f} "
                       f"on {cmp.data} (diff {cmp.diff:+.4f}, 95% CI {cmp.ci_low:+.4f}..{cmp.ci_high:+.4f})")
            if cmp.diff < -tolerance:
                raise ModelError(f"refused: {verdict} is worse than the tolerance {tolerance}",
                                 hint="use --force --reason TEXT to override")
        except ModelError as exc:
            if not force:
                raise
            verdict = f"forced over: {exc.message}"
    previous = set_alias(settings, str(version), alias, reason=reason or verdict, forced=force)
    return previous, verdict


def rollback(settings: Settings, alias: str = "champion", reason: str = "rollback") -> tuple[str, str]:
    """Point `alias` back at the version it had before its last move. Returns (from, to)."""
    client = connect(settings)
    registered = _registered(client, settings.model_name)
    history = _history(registered, alias)
    current = (registered.aliases or {}).get(alias)
    if not history or current is None:
        raise ModelError(f"alias '{alias}' has no history to roll back", hint="see `retain models list`")
    previous = history[-1].get("previous")
    if previous is None:
        raise ModelError(f"alias '{alias}' had no version before {current}; nothing to roll back to")
    set_alias(settings, str(previous), alias, reason=reason)
    return str(current), str(previous)
