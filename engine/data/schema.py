"""The subscriber schema: one declaration that validates every input table.

Why one declaration: the simulator writes it, training reads it, decisions and drift checks validate
against it. Column roles (id, target, categorical, numeric) come from here for the built-in data and
from a `DatasetConfig` YAML for any other table, so a real operator table can be trained on too.
Validation is vectorised with pandera; its findings are turned into one line that names each column
and problem, because a retention analyst should not have to read a traceback.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pandera.pandas as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.data.io import read_yaml_mapping
from engine.errors import ConfigError, DataError
from engine.vocabulary import REASONS

Kind = Literal["id", "numeric", "integer", "categorical", "boolean"]

PLANS = ("prepaid_basic", "prepaid_plus", "postpaid_standard", "postpaid_premium", "family_share", "business")
PREPAID_PLANS = ("prepaid_basic", "prepaid_plus")
AGE_GROUPS = ("18-24", "25-34", "35-49", "50-64", "65+")
CHANNELS = ("sms", "app", "call", "store")


@dataclass(frozen=True)
class Column:
    """One declared column. `min`/`max` bound numeric values; `allowed` lists categorical levels."""

    name: str
    kind: Kind
    description: str
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    allowed: tuple[str, ...] | None = None


SUBSCRIBER_COLUMNS: tuple[Column, ...] = (
    Column("subscriber_id", "id", "Unique subscriber identifier"),
    Column("tenure_months", "integer", "Months since the subscriber joined (network age)", 0, 600),
    Column("plan", "categorical", "Tariff plan", allowed=PLANS),
    Column("contract_months_left", "numeric", "Months until the contract ends; empty for no contract", 0, 60,
           nullable=True),
    Column("region", "categorical", "Home region"),
    Column("age_group", "categorical", "Age band", allowed=AGE_GROUPS),
    Column("preferred_channel", "categorical", "Channel the subscriber prefers to be contacted on",
           allowed=CHANNELS),
    Column("opt_out", "boolean", "True when the subscriber refused marketing contact"),
    Column("arpu_m0", "numeric", "Average revenue per user, current month", 0, 10_000),
    Column("arpu_m1", "numeric", "ARPU one month ago", 0, 10_000),
    Column("arpu_m2", "numeric", "ARPU two months ago", 0, 10_000),
    Column("data_gb_m0", "numeric", "Mobile data used this month (GB)", 0, 10_000),
    Column("data_gb_m1", "numeric", "Mobile data used last month (GB)", 0, 10_000),
    Column("voice_min_m0", "numeric", "Voice minutes this month", 0, 100_000),
    Column("voice_min_m1", "numeric", "Voice minutes last month", 0, 100_000),
    Column("out_of_package_share", "numeric", "Share of the bill from out-of-package fees", 0, 1),
    Column("balance", "numeric", "Account balance (prepaid credit; negative means arrears)", -100_000, 100_000),
    Column("topup_count", "integer", "Top-ups this month", 0, 1_000),
    Column("topup_avg_amount", "numeric", "Average top-up amount this month", 0, 100_000),
    Column("complaints_3m", "integer", "Complaints in the last 3 months", 0, 1_000),
    Column("satisfaction_score", "numeric", "Last satisfaction survey score, 0-10", 0, 10),
    Column("service_call_minutes", "numeric", "Customer-service call minutes in the last 3 months", 0, 100_000),
    Column("days_inactive", "integer", "Days with no usage or suspended", 0, 10_000),
    Column("competitor_contact", "boolean", "Contact with or porting enquiry to a competitor detected"),
)

TARGET = "churn"
REASON_LABEL = "churn_reason"
ID = "subscriber_id"
#: Columns that describe the outcome. They are never model features.
LABEL_COLUMNS: tuple[Column, ...] = (
    Column(TARGET, "integer", "1 when the subscriber churned in the following month", 0, 1),
    Column(REASON_LABEL, "categorical", "True churn reason (simulator ground truth)", nullable=True,
           allowed=REASONS),
)

_PANDERA_DTYPES: dict[str, object] = {
    "id": str, "numeric": float, "integer": "int64", "categorical": str, "boolean": bool,
}


def _pandera_column(col: Column, required: bool) -> pa.Column:
    checks = []
    if col.min is not None or col.max is not None:
        lo = col.min if col.min is not None else float("-inf")
        hi = col.max if col.max is not None else float("inf")
        checks.append(pa.Check.in_range(lo, hi, error=f"values outside [{col.min}, {col.max}]"))
    if col.allowed is not None:
        checks.append(pa.Check.isin(list(col.allowed), error=f"values not in {list(col.allowed)}"))
    return pa.Column(_PANDERA_DTYPES[col.kind], checks=checks, nullable=col.nullable, coerce=True,
                     required=required, unique=col.kind == "id")


def _summarise(errors: pa.errors.SchemaErrors, source: str) -> str:
    """Turn pandera's failure cases into one '<source>: column 'x': problem (e.g. ...)' line.

    A column with a type problem reports only that: its range checks fail as a consequence.
    """
    cases = errors.failure_cases
    parts: dict[tuple[str, str], str] = {}
    type_broken: set[str] = set()
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        check, column = str(check), str(column)
        examples = ", ".join(repr(v) for v in group["failure_case"].dropna().astype(str).unique()[:3])
        if check.startswith("column_in_dataframe"):
            parts[(str(group["failure_case"].iloc[0]), "missing")] = f"missing column '{group['failure_case'].iloc[0]}'"
            continue
        if check.startswith(("coerce_dtype", "dtype")):
            expected = check.split("(")[-1].rstrip(")").strip("'")
            expected = {"int64": "whole numbers", "float64": "numbers", "bool": "true/false"}.get(expected, expected)
            parts[(column, "type")] = f"column '{column}': wrong type, expected {expected} (e.g. {examples})"
            type_broken.add(column)
        elif check == "not_nullable":
            parts[(column, check)] = f"column '{column}': {len(group)} empty value(s)"
        elif check == "field_uniqueness":
            parts[(column, check)] = f"column '{column}': duplicate ids (e.g. {examples})"
        else:
            parts[(column, check)] = f"column '{column}': {len(group)} {check} (e.g. {examples})"
    kept = [text for (column, kind), text in parts.items() if kind in ("type", "missing") or column not in type_broken]
    return f"{source}: " + "; ".join(kept)


def _parse_boolean_columns(df: pd.DataFrame, columns: tuple[Column, ...], source: str) -> pd.DataFrame:
    """Yes/no text in boolean columns parsed by the shared parser (`engine.data.flags`), before pandera.

    Why: pandera coerces with `astype(bool)`, which reads every non-empty string, "no" and "false" included,
    as True, and an empty cell as False: a CSV saying opt_out = "no" would silently become an opt-out, an
    empty one a consent. Real booleans pass untouched; empty cells of a non-nullable column are refused.
    """
    from engine.data.flags import parse_flags

    parsed, empty = {}, []
    for col in columns:
        if col.kind == "boolean" and col.name in df.columns and not pd.api.types.is_bool_dtype(df[col.name].dtype):
            flags = parse_flags(df[col.name], col.name, source)
            missing = int(flags.isna().sum())
            if missing and not col.nullable:  # pandera would coerce an empty cell to False
                empty.append(f"column '{col.name}': {missing} empty value(s)")
            parsed[col.name] = flags.astype(bool) if not missing else flags.astype(object).where(flags.notna(), None)
    if empty:
        raise DataError(f"{source}: " + "; ".join(empty), hint="see `retain data schema` for the expected columns")
    return df.assign(**parsed) if parsed else df


def validate_frame(df: pd.DataFrame, columns: tuple[Column, ...], *, source: str,
                   optional: tuple[Column, ...] = ()) -> pd.DataFrame:
    """Validate and coerce `df` against declared columns; raise one DataError naming every problem."""
    if len(df) == 0:
        raise DataError(f"{source}: the table has no rows")
    df = _parse_boolean_columns(df, (*columns, *optional), source)
    spec = {c.name: _pandera_column(c, True) for c in columns}
    spec.update({c.name: _pandera_column(c, False) for c in optional})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return pa.DataFrameSchema(spec, strict=False).validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise DataError(_summarise(exc, source),
                        hint="see `retain data schema` for the expected columns") from None


def validate_subscribers(df: pd.DataFrame, *, source: str = "input", require_target: bool = False) -> pd.DataFrame:
    """Validate a subscriber table against the built-in schema (labels optional unless required)."""
    required = SUBSCRIBER_COLUMNS + ((LABEL_COLUMNS[0],) if require_target else ())
    optional = LABEL_COLUMNS[1:] if require_target else LABEL_COLUMNS
    return validate_frame(df, required, source=source, optional=optional)


# ---------------------------------------------------------------------------------------------
# Dataset config: column roles for any table
# ---------------------------------------------------------------------------------------------


class DatasetConfig(BaseModel):
    """Maps a table's columns to roles, so a table that is not the built-in schema can be used.

    YAML example::

        id_column: customerID
        target: Churn
        positive_label: "Yes"
        categorical: [gender, Contract]
        numeric: [tenure, MonthlyCharges]
        drop: [rownames]
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    id_column: str | None = None
    target: str = TARGET
    positive_label: str | int | bool | None = Field(
        default=None, description="Value of the target that means 'churned'; inferred for 1/0, yes/no, true/false")
    categorical: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    drop: list[str] = Field(default_factory=list)
    builtin_schema: bool = Field(default=False, description="Validate against the built-in subscriber schema")

    @model_validator(mode="after")
    def _disjoint(self) -> DatasetConfig:
        both = set(self.categorical) & set(self.numeric)
        if both:
            raise ValueError(f"columns listed as both categorical and numeric: {sorted(both)}")
        if self.target in set(self.categorical) | set(self.numeric):
            raise ValueError(f"target '{self.target}' must not also be a feature")
        return self

    @property
    def features(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    @classmethod
    def builtin(cls) -> DatasetConfig:
        """Roles of the built-in subscriber schema (what the simulator writes).

        No positive label: `churn` is a flag, read by the shared yes/no parser (1/0, yes/no, churn/stay).
        """
        return cls(
            name="subscribers", id_column=ID, target=TARGET, positive_label=None, builtin_schema=True,
            categorical=[c.name for c in SUBSCRIBER_COLUMNS if c.kind in ("categorical", "boolean")],
            numeric=[c.name for c in SUBSCRIBER_COLUMNS if c.kind in ("numeric", "integer")],
            drop=[REASON_LABEL],
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetConfig:
        p = Path(path)
        raw = read_yaml_mapping(p, what="dataset config")
        try:
            return cls(**raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "config"
            raise ConfigError(f"{p}: field '{field}': {err['msg']}") from None

    def validate_table(self, df: pd.DataFrame, *, source: str, require_target: bool = True) -> pd.DataFrame:
        """Check the roles against a table: declared columns exist and numeric ones are numbers."""
        if self.builtin_schema:
            return validate_subscribers(df, source=source, require_target=require_target)
        if len(df) == 0:
            raise DataError(f"{source}: the table has no rows")
        wanted = [*self.features, *([self.target] if require_target else []),
                  *([self.id_column] if self.id_column else [])]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise DataError(f"{source}: missing column(s) {missing}",
                            hint="fix the dataset config or the table")
        out = df.copy()
        problems = []
        for col in self.numeric:
            converted = pd.to_numeric(out[col], errors="coerce")
            bad = converted.isna() & out[col].notna() & (out[col].astype(str).str.strip() != "")
            if bad.any():
                examples = ", ".join(repr(v) for v in out.loc[bad, col].astype(str).unique()[:3])
                problems.append(f"column '{col}': wrong type, expected numbers (e.g. {examples})")
            out[col] = converted.astype(float)
        if problems:
            raise DataError(f"{source}: " + "; ".join(problems))
        for col in self.categorical:
            out[col] = out[col].astype("string").fillna("__missing__").astype(str)
        return out


def schema_table() -> list[dict[str, object]]:
    """The built-in schema as rows, for `retain data schema` and the README."""
    rows = []
    for c in (*SUBSCRIBER_COLUMNS, *LABEL_COLUMNS):
        rng = "" if c.min is None else f"{c.min:g}..{c.max:g}"
        rows.append({"column": c.name, "kind": c.kind, "range/levels": rng or ", ".join(c.allowed or ()),
                     "nullable": c.nullable, "description": c.description})
    return rows
