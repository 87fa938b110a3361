"""Model versions and aliases: what is registered, what serves, and moving the `champion` safely.

Why aliases (not stages): MLflow 3 deprecates stages. `champion` is what `retain decide` uses by
default, `challenger` a candidate under evaluation. Each alias move is recorded on the registered
model (`alias_history.<alias>`) with who/why, whether it was a promotion or a rollback and what the gate
said, so `rollback` can walk back through the versions the alias held (never forward again).

Why the gate is fair: both versions are scored on the same rows, which neither was trained on. Training
holds a row out by a hash of its subscriber id (`training.holdout`), so every version trained on one table
(same `data_fingerprint`) holds out the same rows whatever its seed; `compare` intersects their logged
hold-outs by row key. Versions trained on different tables share no such rows: then `--data` with an
independent labelled table is required. `compare(a, b)` is exactly `-compare(b, a)`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
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


#: Alias names: a letter, then letters, digits, '_' or '-' (at most 64). MLflow itself reserves 'latest' and
#: version-like names ('v3'), which would be read as a version rather than an alias.
ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_RESERVED_ALIAS = re.compile(r"(?i)latest|v\d+")


def validate_alias(alias: str) -> str:
    """`alias` itself, or a one-line ModelError naming the allowed pattern."""
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        shown = repr(alias) if isinstance(alias, str) and len(alias) <= 80 else "given"
        raise ModelError(f"alias {shown} is not a valid alias name: use a letter, then letters, digits, "
                         "'_' or '-' (at most 64 characters)", hint="e.g. --alias champion or --alias challenger")
    if _RESERVED_ALIAS.fullmatch(alias):
        raise ModelError(f"alias '{alias}' is reserved by MLflow ('latest' and version-like names such as 'v3')",
                         hint="e.g. --alias champion or --alias challenger")
    return alias


def _history(registered, alias: str) -> list[dict[str, Any]]:
    raw = (registered.tags or {}).get(f"alias_history.{alias}")
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except ValueError:
        raise ModelError(f"the alias history of '{alias}' (registered-model tag 'alias_history.{alias}') is "
                         "not JSON", hint="repair or delete the tag in the MLflow UI") from None
    return [h for h in history if isinstance(h, dict) and h.get("version") is not None] \
        if isinstance(history, list) else []


def set_alias(settings: Settings, version: str, alias: str, *, reason: str = "", forced: bool = False,
              gate: str = "none", kind: str = "promote", skipped: list[str] | None = None) -> str | None:
    """Point `alias` at `version`; return the version it pointed at before (None if new).

    The move is appended to the alias history (registered-model tag `alias_history.<alias>`): `kind`
    (promote or rollback), `gate` (passed, refused - i.e. forced over a refusal -, or none when there was
    nothing to compare with), who, when, why, and for a rollback the versions it skipped.
    """
    validate_alias(alias)
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
    entry = {"version": str(version), "previous": None if previous is None else str(previous),
             "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "by": getpass.getuser(),
             "reason": reason, "forced": forced, "gate": gate, "kind": kind}
    if skipped:
        entry["skipped"] = list(skipped)
    history.append(entry)
    client.set_registered_model_tag(settings.model_name, f"alias_history.{alias}", json.dumps(history[-50:]))
    client.set_model_version_tag(settings.model_name, version, f"promoted_to.{alias}",
                                 json.dumps({"reason": reason, "forced": forced, "gate": gate, "kind": kind}))
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
    if not diffs:
        raise ModelError(f"cannot bootstrap an AUC difference on {n} row(s) holding one class",
                         hint="pass --data FILE with both churners and non-churners")
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def _version_tags(settings: Settings, loaded) -> dict[str, str]:
    if not loaded.version:
        return {}
    from mlflow.exceptions import MlflowException

    try:
        return dict(connect(settings).get_model_version(settings.model_name, loaded.version).tags or {})
    except MlflowException:
        return {}


def _rule(tags: dict[str, str]) -> dict[str, Any] | None:
    try:
        rule = json.loads(tags.get("holdout_rule") or "null")
    except ValueError:
        return None
    return rule if isinstance(rule, dict) else None


def _shared_holdout(settings: Settings, first, second):
    """(frame, y, description): the rows both versions held out, or a one-line reason to pass --data.

    Versions trained on the same table (same data fingerprint) with the hash hold-out rule hold out the same
    rows whatever their seeds; their logged samples are intersected by hold-out key, so neither version is
    scored on a row it was trained on.
    """
    from engine.model.registry import HOLDOUT_KEY, holdout_rows

    names = f"versions {first.version or first.uri} and {second.version or second.uri}"
    need_data = "pass --data FILE: a labelled table neither version was trained on (e.g. a later month)"
    tags_a, tags_b = _version_tags(settings, first), _version_tags(settings, second)
    for loaded, tags in ((first, tags_a), (second, tags_b)):
        if _rule(tags) is None:
            raise ModelError(f"version {loaded.version or loaded.uri} records no hold-out rule (trained before "
                             "hold-outs were a function of the data), so its hold-out may overlap the other "
                             "version's training rows", hint=need_data)
    fp_a, fp_b = tags_a.get("data_fingerprint", ""), tags_b.get("data_fingerprint", "")
    if not fp_a or fp_a != fp_b:
        raise ModelError(f"{names} were trained on different data (fingerprints {fp_a[:12] or '?'} and "
                         f"{fp_b[:12] or '?'}), so neither's hold-out is unseen by the other", hint=need_data)
    rule_a, rule_b = _rule(tags_a), _rule(tags_b)
    if {k: v for k, v in rule_a.items() if k != "share"} != {k: v for k, v in rule_b.items() if k != "share"}:
        raise ModelError(f"{names} held out rows by different rules ({tags_a['holdout_rule']} vs "
                         f"{tags_b['holdout_rule']})", hint=need_data)
    rows_a, rows_b = holdout_rows(settings, first), holdout_rows(settings, second)
    if HOLDOUT_KEY not in rows_a.columns or HOLDOUT_KEY not in rows_b.columns:
        raise ModelError(f"the hold-out logged with {names} carries no row keys", hint=need_data)
    shared = rows_a[rows_a[HOLDOUT_KEY].isin(set(rows_b[HOLDOUT_KEY]))]
    shared = shared.sort_values(HOLDOUT_KEY, kind="stable")
    target = first.model.spec.get("target", "churn")
    y = shared[target].to_numpy() if target in shared.columns else None
    if y is None or len(shared) < 10 or len(set(y.tolist())) < 2:
        raise ModelError(f"{names} share only {len(shared)} logged hold-out row(s), too few (or one class) to "
                         "compare", hint=need_data)
    frame = shared.drop(columns=[HOLDOUT_KEY])
    return frame, y, f"shared hold-out of versions {first.version} and {second.version}"


def _labelled(settings: Settings, first, second, data: str | None):
    """(frame, y, description): one labelled table to score both models on."""
    if data:
        from engine.data.labelled import load_training_table

        table = load_training_table(data, target=first.model.spec.get("target"))
        for loaded in (first, second):
            if _version_tags(settings, loaded).get("data_fingerprint") == table.fingerprint:
                raise ModelError(f"{data} is the table version {loaded.version} was trained on, so it is not "
                                 "independent", hint="pass --data with a labelled table neither version was "
                                                     "trained on (e.g. a later month)")
        y = table.target.to_numpy()
        if len(set(y.tolist())) < 2:
            raise ModelError(f"{data}: the target holds one class only, so ROC AUC cannot rank the models",
                             hint="pass a labelled table with both churners and non-churners")
        return table.frame, y, data
    return _shared_holdout(settings, first, second)


def _order_key(loaded) -> tuple[int, int, str]:
    v = str(loaded.version or "")
    return (0, int(v), "") if v.isdigit() else (1, 0, loaded.uri)


def compare(settings: Settings, a: str, b: str, *, data: str | None = None, rounds: int = 500) -> Comparison:
    """Score versions a and b on the same labelled rows: both held-out rows, or `data`.

    Symmetric by construction: the scores are computed for the pair in version order and negated for the
    other order, so `compare(a, b)` and `compare(b, a)` report the same magnitude with opposite signs.
    Versions trained on different data have no rows both held out: then `data` is required.
    """
    from engine.model.registry import load_model

    model_a, model_b = load_model(settings, a), load_model(settings, b)
    _check_same_inputs(model_a, model_b)
    swap = _order_key(model_b) < _order_key(model_a)
    first, second = (model_b, model_a) if swap else (model_a, model_b)
    frame, y, described = _labelled(settings, first, second, data)
    from sklearn.metrics import average_precision_score, roc_auc_score

    p_1, p_2 = first.predict_proba(frame), second.predict_proba(frame)
    lo, hi = paired_bootstrap_auc(y, p_1, p_2, rounds=rounds)
    auc_1, auc_2 = float(roc_auc_score(y, p_1)), float(roc_auc_score(y, p_2))
    pr_1, pr_2 = float(average_precision_score(y, p_1)), float(average_precision_score(y, p_2))
    if swap:
        auc_1, auc_2, pr_1, pr_2, lo, hi = auc_2, auc_1, pr_2, pr_1, -hi, -lo
    return Comparison(a=model_a.version or a, b=model_b.version or b, rows=len(y), data=described,
                      auc_a=auc_1, auc_b=auc_2, diff=auc_1 - auc_2, ci_low=lo, ci_high=hi,
                      pr_auc_a=pr_1, pr_auc_b=pr_2)


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

    Both are scored on the same rows (`compare`): the rows both held out when they were trained on the same
    table, else `data` (required then). Returns (previous version, verdict text). `force` (with a reason)
    overrides a refusal; the history records the move as `gate: refused`, and `rollback` never returns to
    it on its own.
    """
    from engine.model.registry import load_model

    validate_alias(alias)
    tolerance = settings.governance.auc_tolerance if tolerance is None else tolerance
    if force and not reason.strip():
        raise ModelError("--force needs --reason TEXT", hint="say why the gate is overridden; it is recorded")
    client = connect(settings)
    current = (_registered(client, settings.model_name).aliases or {}).get(alias)
    verdict, gate = f"no current '{alias}'", "none"
    if current is not None and str(current) == str(version):
        return None, f"version {version} already holds '{alias}'; nothing changed"
    if current is not None:
        candidate, holder = load_model(settings, str(version)), load_model(settings, str(current))
        try:
            _check_same_inputs(candidate, holder)
            cmp = compare(settings, str(version), str(current), data=data, rounds=200)
            verdict = (f"version {version} AUC {cmp.auc_a:.4f} vs {alias} version {current} {cmp.auc_b:.4f} "
                       f"on {cmp.data}, {cmp.rows:,} rows (diff {cmp.diff:+.4f}, "
                       f"95% CI {cmp.ci_low:+.4f}..{cmp.ci_high:+.4f})")
            if cmp.diff < -tolerance:
                raise ModelError(f"refused: {verdict} is worse than the tolerance {tolerance}",
                                 hint="use --force --reason TEXT to override")
            gate = "passed"
        except ModelError as exc:
            if not force:
                raise
            verdict, gate = f"forced over: {exc.message}", "refused"
    previous = set_alias(settings, str(version), alias, reason=reason or verdict, forced=force, gate=gate)
    return previous, verdict


@dataclass
class Rollback:
    """What `rollback` did. Unpacks as (from, to) for callers that print "version A -> version B"; `to`
    then also names what was skipped."""

    alias: str
    from_version: str
    to_version: str
    skipped: list[str]

    @property
    def note(self) -> str:
        if not self.skipped:
            return ""
        plural = "s" if len(self.skipped) > 1 else ""
        return (f"skipped version{plural} {', '.join(self.skipped)}: refused by the promotion gate and forced in; "
                "promote with --force --reason to reinstate")

    def __iter__(self):
        yield self.from_version
        yield self.to_version + (f" ({self.note})" if self.note else "")


def alias_stack(history: list[dict[str, Any]], current: str | None) -> list[dict[str, Any]]:
    """The versions `alias` held, oldest first, with rollbacks undone: what a rollback can walk back through.

    Each promotion pushes its version (with whether the gate refused it); each rollback pops back to the
    version it restored. The top is the current holder (pushed if the alias was moved outside retain).
    Histories written before moves were labelled count every move as a promotion and a forced one as refused.
    """
    stack: list[dict[str, Any]] = []
    if history and history[0].get("previous") is not None:  # the history was cut at 50 moves
        stack.append({"version": str(history[0]["previous"]), "refused": False})
    for entry in history:
        version = str(entry["version"])
        if entry.get("kind") == "rollback":
            while stack and stack[-1]["version"] != version:
                stack.pop()
            if not stack:
                stack.append({"version": version, "refused": False})
            continue
        refused = entry.get("gate") == "refused" if "gate" in entry else bool(entry.get("forced"))
        if stack and stack[-1]["version"] == version:
            stack[-1] = {"version": version, "refused": refused}
        else:
            stack.append({"version": version, "refused": refused})
    if current is not None and (not stack or stack[-1]["version"] != str(current)):
        stack.append({"version": str(current), "refused": False})
    return stack


def rollback(settings: Settings, alias: str = "champion", reason: str = "rollback") -> Rollback:
    """Point `alias` at the version it held before the current one, walking back through its history.

    Repeated rollbacks keep going back (v3 -> v2 -> v1), never forward. A version the gate refused and that
    was forced in is skipped (the result says which); when only such versions remain, nothing moves and the
    error says how to reinstate one deliberately (`promote --force --reason`).
    """
    validate_alias(alias)
    client = connect(settings)
    registered = _registered(client, settings.model_name)
    current = (registered.aliases or {}).get(alias)
    if current is None:
        raise ModelError(f"alias '{alias}' points at no version; nothing to roll back", hint="see `retain models list`")
    stack = alias_stack(_history(registered, alias), str(current))
    stack.pop()  # the current holder
    if not stack:
        raise ModelError(f"alias '{alias}' held no version before version {current}; nothing to roll back to",
                         hint=f"its moves are in the registered-model tag alias_history.{alias} (MLflow UI)")
    skipped: list[str] = []
    while stack and stack[-1]["refused"]:
        skipped.append(stack.pop()["version"])
    if not stack:
        which = ", ".join(skipped)
        raise ModelError(f"alias '{alias}': the version(s) before {current} ({which}) were refused by the promotion "
                         "gate and forced in; rollback does not restore them",
                         hint=f"to reinstate one deliberately: retain models promote {skipped[0]} --alias {alias} "
                              "--force --reason TEXT")
    target = stack[-1]["version"]
    set_alias(settings, target, alias, reason=reason, kind="rollback", gate="none", skipped=skipped)
    return Rollback(alias=alias, from_version=str(current), to_version=target, skipped=skipped)
