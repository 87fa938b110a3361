"""What runs inside executor Python workers: the model and the policy set, loaded once per process,
and the per-partition functions `mapInArrow` calls.

Why a module-level cache: a Python worker serves many tasks (spark.python.worker.reuse), and loading the
model (MLflow + CatBoost) and compiling the policy set (durable-rules) takes seconds. Each task gets a
small picklable `Job` (the model's artefact folder name shipped with `SparkContext.addFile`, the policy
folder's files as bytes, the settings); the loaded objects are cached in `_CACHE` keyed by a hash of
what they were built from, so a worker builds them once per run however many partitions it runs.

The per-subscriber work is `engine.decision.assess` + `constrain` with an unlimited `RunState`: with no
budget and no capacity limit, constrain gives each subscriber its best candidate (and the control
group, the decision-table columns, statuses none/blocked/not_worth); the subscriber's other eligible
candidates travel along as arrays (in preference order), for the distributed allocation to fall back on.
An explored subscriber (engine/decision/constrain.py, exploration) carries only its drawn candidate (none
when it drew no contact) and `_c_explored`: the driver pays those first, as the local run does. Each row
also carries the propensity of its final action for each way it can end (`_c_p_sent`, `_c_p_control`,
`_c_p_none`), for the final table to pick from once the allocation is known.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from engine.data.schema import ID

_CACHE: dict[str, Any] = {}

SEQ = "_seq"  # input order (monotonically_increasing_id at read): work-order numbering follows it
#: per subscriber, its contactable candidates that take part in arbitration (`eligible`), best first
CANDIDATE_ARRAYS = {
    "_c_channel": pa.string(), "_c_offer_id": pa.string(), "_c_rule_id": pa.string(), "_c_stage": pa.string(),
    "_c_message": pa.string(), "_c_priority": pa.int64(), "_c_total_cost": pa.float64(),
    "_c_density": pa.float64(), "_c_p_accept": pa.float64(), "_c_offer_cost": pa.float64(),
    "_c_channel_cost": pa.float64(), "_c_expected_saved_value": pa.float64(), "_c_net_value": pa.float64(),
    "_c_tau": pa.float64(),
}
CONTROL_FLAG = "_in_control"  # control_mask of the subscriber (only meaningful when it has candidates)


def policy_files(folder: str | Path) -> dict[str, bytes]:
    """Every file under a policy folder (or the one file), by relative path: what executors rebuild it from."""
    root = Path(folder)
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def files_hash(files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


@dataclass
class Job:
    """Everything a task needs, small and picklable (the model travels as a folder added with addFile)."""

    settings: Any
    model_dir_name: str  # the folder name given to SparkContext.addFile
    model_local_dir: str  # the same folder on the driver (used when the task runs in the driver's machine)
    model_uri: str
    model_name: str
    model_version: str | None
    model_run_id: str | None
    policy: dict[str, bytes]
    policy_single_file: bool
    run_id: str
    run_date: dt.date
    source: str
    risk_cutoffs: tuple[float, float] | None = None
    learned: dict[tuple[str, str], float] | None = None
    history: pd.DataFrame | None = None
    output_schema: pa.Schema | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the uplift model of `arbitration: incremental_value`, shipped like the churn model (None: the priors)
    uplift_dir_name: str | None = None
    uplift_local_dir: str | None = None
    uplift_uri: str | None = None
    uplift_version: str | None = None
    uplift_run_id: str | None = None

    @property
    def model_key(self) -> str:
        return f"model:{self.model_uri}:{self.model_version}:{self.model_dir_name}"

    @property
    def policy_key(self) -> str:
        return f"policy:{files_hash(self.policy)}"

    @property
    def uplift_key(self) -> str:
        return f"uplift:{self.uplift_uri}:{self.uplift_version}:{self.uplift_dir_name}"


def _shipped_folder(dir_name: str, local_dir: str) -> str:
    try:
        from pyspark import SparkFiles

        path = SparkFiles.get(dir_name)
        if os.path.isdir(path):
            return path
    except Exception:  # not inside Spark (a plain call in tests, the driver's sample)
        pass
    return local_dir


def _model_folder(job: Job) -> str:
    return _shipped_folder(job.model_dir_name, job.model_local_dir)


def loaded_model(job: Job):
    """The churn model for this job, loaded once per process (a LoadedModel, as `load_model` gives)."""
    key = job.model_key
    if key not in _CACHE:
        import mlflow.pyfunc

        from engine.model.registry import LoadedModel

        inner = mlflow.pyfunc.load_model(_model_folder(job)).unwrap_python_model()
        _CACHE[key] = LoadedModel(uri=job.model_uri, name=job.model_name, version=job.model_version,
                                  run_id=job.model_run_id, model=inner)
    return _CACHE[key]


def uplift_model(job: Job):
    """The uplift model for this job (a LoadedUplift, as `load_uplift` gives), loaded once per process; None
    when the job has none (the offers' prior effects rank, as on the local engine)."""
    if job.uplift_dir_name is None or job.uplift_local_dir is None:
        return None
    key = job.uplift_key
    if key not in _CACHE:
        import mlflow.pyfunc

        from engine.uplift.registry import LoadedUplift

        folder = _shipped_folder(job.uplift_dir_name, job.uplift_local_dir)
        inner = mlflow.pyfunc.load_model(folder).unwrap_python_model()
        _CACHE[key] = LoadedUplift(uri=str(job.uplift_uri), version=job.uplift_version, run_id=job.uplift_run_id,
                                   model=inner)
    return _CACHE[key]


def policy_engine(job: Job):
    """The compiled policy set, rebuilt once per process from the shipped files (validated again here)."""
    key = job.policy_key
    if key not in _CACHE:
        from engine.decision.run import load_policy_engine

        with tempfile.TemporaryDirectory(prefix="retain-policies-") as tmp:  # read whole, then removed
            folder = Path(tmp)
            for name, data in job.policy.items():
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            root = folder / next(iter(job.policy)) if job.policy_single_file else folder
            _CACHE[key] = load_policy_engine(root)
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------
# per partition
# ---------------------------------------------------------------------------------------------
def _frames(batches: Iterator[pa.RecordBatch], rows: int = 100_000) -> Iterator[pa.Table]:
    """Arrow batches regrouped into tables of about `rows` rows (per-call overheads are per table)."""
    held: list[pa.RecordBatch] = []
    n = 0
    for b in batches:
        if b.num_rows == 0:
            continue
        held.append(b)
        n += b.num_rows
        if n >= rows:
            yield pa.Table.from_batches(held)
            held, n = [], 0
    if held:
        yield pa.Table.from_batches(held)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(split_blocks=True, self_destruct=True)


def probabilities(job: Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Churn probability per row exactly as `assess` computes it (for capacity-grading cut-offs)."""
    from engine.decision.assess import score_rows
    from engine.model.churn import PROBABILITY

    loaded = loaded_model(job)
    for table in _frames(batches):
        frame = _to_pandas(table)
        scored = score_rows(frame, loaded, job.settings, source=job.source)
        yield pa.RecordBatch.from_arrays([pa.array(scored[PROBABILITY].to_numpy(dtype=float))],
                                         names=["p"])


def decide_rows(frame: pd.DataFrame, job: Job) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The per-subscriber decision for rows of one partition: the decision table with each subscriber's
    best candidate, and its eligible candidates as (offsets, values) per array column."""
    from engine.decision.arbitration import eligible, preference_order
    from engine.decision.constrain import (
        RunState,
        constrain,
        draw_exploration,
        matches_best,
        propensity_cases,
        render_messages,
    )
    from engine.decision.contact import control_mask
    from engine.decision.decide import assess

    loaded, engine = loaded_model(job), policy_engine(job)
    state = RunState(run_id=job.run_id, budget_left=None, capacity_left={}, control=job.settings.control_group,
                     risk_cutoffs=job.risk_cutoffs)
    a = assess(frame, loaded=loaded, policy_engine=engine, settings=job.settings, run_date=job.run_date,
               history=job.history, learned=job.learned, source=job.source, state=state, uplift=uplift_model(job))
    decisions = constrain(a, state, outputs=False)  # the driver builds work orders and the summary
    table = decisions.table

    c = a.candidates
    ok = np.flatnonzero(c["contactable"].to_numpy() & eligible(c["net_value"].to_numpy(), a.prefer))
    rows = c["row"].to_numpy()[ok]
    order = ok[preference_order(rows, c["rank"].to_numpy()[ok], c["priority"].to_numpy()[ok],
                                c["net_value"].to_numpy()[ok], a.prefer)]
    draw = draw_exploration(a)
    if draw.explored.any():  # an explored subscriber's only candidate is its drawn one (none: no candidate)
        order = order[~draw.explored[c["row"].to_numpy()[order]]]
        drawn = draw.action[draw.explored & (draw.action >= 0)]
        order = np.concatenate([order, drawn])
        order = order[np.argsort(c["row"].to_numpy()[order], kind="stable")]
    p_sent, p_control, p_none = propensity_cases(draw, matches_best(draw, c), job.settings.control_group.share)
    table["_c_explored"] = draw.explored
    table["_c_p_sent"], table["_c_p_control"], table["_c_p_none"] = p_sent, p_control, p_none
    n = len(table)
    cand_rows = c["row"].to_numpy()[order]
    counts = np.bincount(cand_rows, minlength=n)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)

    def col(name: str) -> np.ndarray:
        return c[name].to_numpy()[order]

    cost = col("total_cost").astype(float)
    net = col("net_value").astype(float)
    rule_ids = col("rule_id").astype(object)
    # each candidate's message, rendered as constrain renders the chosen one's: one call per preference
    # position (each subscriber appears once per call)
    messages = np.full(len(order), None, dtype=object)
    position = np.arange(len(order)) - np.repeat(offsets[:-1], counts)
    for k in range(int(counts.max()) if len(order) else 0):
        at = np.flatnonzero(position == k)
        messages[at] = render_messages(engine, table, cand_rows[at], rule_ids[at])[cand_rows[at]]
    arrays = {
        "_c_channel": col("channel").astype(object), "_c_offer_id": col("offer_id").astype(object),
        "_c_rule_id": rule_ids, "_c_stage": col("stage").astype(object), "_c_message": messages,
        "_c_priority": col("priority").astype(np.int64), "_c_total_cost": cost,
        "_c_density": net / np.maximum(cost, 1e-9),  # the same expression as allocate_arrays
        "_c_p_accept": col("p_accept").astype(float), "_c_offer_cost": col("offer_cost").astype(float),
        "_c_channel_cost": col("channel_cost").astype(float),
        "_c_expected_saved_value": col("expected_saved_value").astype(float), "_c_net_value": net,
        "_c_tau": col("tau").astype(float) if "tau" in c.columns else np.zeros(len(order)),
    }
    control = np.zeros(n, dtype=bool)
    has = np.flatnonzero(counts > 0)
    if len(has):
        control[has] = control_mask(pd.Series(table[ID].to_numpy(dtype=object)[has]), job.settings.control_group)
    table[CONTROL_FLAG] = control
    return table, {name: (offsets, values) for name, values in arrays.items()}


def to_batch(table: pd.DataFrame, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
             schema: pa.Schema) -> pa.RecordBatch:
    """The partition's decision table plus the candidate list columns, in `schema`'s column order/types."""
    columns = []
    for f in schema:
        if f.name in arrays:
            offsets, values = arrays[f.name]
            columns.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                                    pa.array(values, f.type.value_type)))
        else:
            columns.append(_column(table[f.name], f.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _column(values: pd.Series, typ: pa.DataType) -> pa.Array:
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        v = values.astype(object).to_numpy()
        v = np.where(pd.isna(v), None, v)
        return pa.array([x if x is None or isinstance(x, str) else str(x) for x in v], type=typ)
    if pa.types.is_boolean(typ):
        return pa.array(values.to_numpy(dtype=bool), type=typ)
    return pa.array(values.to_numpy(), type=typ, from_pandas=True)


def decide_partition(job: Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: input rows (+ _seq) -> decision table rows with candidate arrays (+ _seq)."""
    for table in _frames(batches):
        frame = _to_pandas(table)
        seq = frame.pop(SEQ).to_numpy()
        decided, arrays = decide_rows(frame, job)
        decided[SEQ] = seq
        yield to_batch(decided, arrays, job.output_schema)


def arrow_schema(table: pd.DataFrame) -> pa.Schema:
    """Arrow types for a decision table sample: object/string/category columns are strings."""
    fields = []
    for name in table.columns:
        s = table[name]
        if pd.api.types.is_bool_dtype(s.dtype):
            t = pa.bool_()
        elif pd.api.types.is_integer_dtype(s.dtype):
            t = pa.int64()
        elif pd.api.types.is_float_dtype(s.dtype):
            t = pa.float64()
        elif pd.api.types.is_datetime64_any_dtype(s.dtype):
            t = pa.timestamp("us")
        else:
            t = pa.string()
        fields.append(pa.field(name, t))
    fields += [pa.field(name, pa.list_(t)) for name, t in CANDIDATE_ARRAYS.items()]
    fields.append(pa.field(SEQ, pa.int64()))
    return pa.schema(fields)
