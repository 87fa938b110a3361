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
from engine.registry import connect

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
