"""Yes/no columns: one parser (`engine.data.flags`) behind outcome files, drift labels and training targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.data.flags import parse_flags
from engine.data.io import sqlite_path
from engine.data.labelled import binary_target
from engine.errors import DataError
from engine.feedback.ingest import read_outcomes
from engine.monitoring.drift import binary_outcomes
from engine.vocabulary import FALSE_WORDS, TRUE_WORDS


@pytest.mark.parametrize(("values", "expected"), [
    (pd.Series([True, False, True]), [True, False, True]),
    (pd.Series([1, 0, 1]), [True, False, True]),
    (pd.Series([1.0, np.nan, 0.0]), [True, None, False]),
    (pd.Series(["Yes", " no ", "TRUE", "f", "Y", "n", "1", "0", "1.0", "", None]),
     [True, False, True, False, True, False, True, False, True, None, None]),
])
def test_flags_accept_booleans_numbers_and_words_in_any_case(values, expected):
    got = parse_flags(values, "contacted", "file.csv")
    assert str(got.dtype) == "boolean" and got.index.equals(values.index)
    assert [None if pd.isna(v) else bool(v) for v in got] == expected


def test_every_vocabulary_word_is_accepted_in_any_case():
    words = sorted(TRUE_WORDS | FALSE_WORDS)
    for spelled in (words, [w.upper() for w in words], [w.title() for w in words]):
        got = parse_flags(pd.Series(spelled), "c", "s").tolist()
        assert got == [w in TRUE_WORDS for w in words]


@pytest.mark.parametrize(("values", "message"), [
    (pd.Series(["yes", "maybe", "maybe"]), "file.csv: column 'accepted' row 3: 'maybe' is not yes/no (2 rows)"),
    (pd.Series([0, 2, 1]), "file.csv: column 'accepted' row 3: 2 is not yes/no"),
    (pd.Series([0.0, 0.5]), "file.csv: column 'accepted' row 3: 0.5 is not yes/no"),
])
def test_anything_else_is_refused_naming_the_column_and_a_value(values, message):
    with pytest.raises(DataError) as err:
        parse_flags(values, "accepted", "file.csv")
    assert err.value.message == message


def test_the_three_readers_agree_on_the_same_column(tmp_path):
    column = pd.Series(["Yes", "no", "T", "f", "1", "0"])
    truth = [1, 0, 1, 0, 1, 0]
    # outcome file
    pd.DataFrame({"order_id": [f"o{i}" for i in range(6)], "contacted": column, "accepted": "no",
                  "churned_30d": column}).to_csv(tmp_path / "o.csv", index=False)
    assert read_outcomes(tmp_path / "o.csv")["churned_30d"].astype(int).tolist() == truth
    # drift labels
    assert binary_outcomes(column, "churn", "current").tolist() == truth
    # training target (which also knows churn/stay)
    assert binary_target(column, source="t.csv", name="churn").tolist() == truth
    assert binary_target(pd.Series(["Churned", "stay"]), source="t.csv", name="churn").tolist() == [1, 0]
    # and refuse the same thing with the same words
    for read in (lambda s: binary_outcomes(s, "churn", "current"),
                 lambda s: binary_target(s, source="t.csv", name="churn"),
                 lambda s: parse_flags(s, "churn", "o.csv")):
        with pytest.raises(DataError, match=r"column 'churn'.*'maybe' is not yes/no"):
            read(pd.Series(["yes", "maybe"]))


def test_drift_labels_keep_unknown_outcomes_as_missing():
    got = binary_outcomes(pd.Series(["yes", None, "no", ""]), "churn", "current")
    assert got.iloc[0] == 1.0 and np.isnan(got.iloc[1]) and got.iloc[2] == 0.0 and np.isnan(got.iloc[3])


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///mlruns/mlflow.db", "mlruns/mlflow.db"),
    ("sqlite:////srv/retain/mlruns/mlflow.db", "/srv/retain/mlruns/mlflow.db"),
    ("sqlite+pysqlite:///store/retain.db?timeout=30", "store/retain.db"),
    ("sqlite://", None), ("sqlite:///:memory:", None), ("http://mlflow:5000", None),
    ("postgresql+psycopg://retain@db/retain", None), ("", None), (None, None),
])
def test_sqlite_path(url, path):
    got = sqlite_path(url)
    assert (None if got is None else str(got)) == path


def test_subscriber_booleans_written_as_words_are_read_as_meant(tmp_path):
    """pandas' astype(bool) reads "no" as True and an empty cell as False: the schema parses them instead."""
    from engine.data.schema import validate_subscribers
    from engine.data.simulator import generate

    month = generate(6, seed=1).assign(opt_out=["no", "YES", "false", "0", "n", "t"],
                                       competitor_contact=[0, 1, 0, 0, 1, 0])
    valid = validate_subscribers(month, source="m.csv")
    assert valid["opt_out"].tolist() == [False, True, False, False, False, True]
    assert valid["competitor_contact"].tolist() == [False, True, False, False, True, False]
    with pytest.raises(DataError, match=r"^m\.csv: column 'opt_out': 1 empty value\(s\) \(hint"):
        validate_subscribers(month.assign(opt_out=["no", None, "no", "no", "no", "no"]), source="m.csv")
    with pytest.raises(DataError, match=r"m\.csv: column 'opt_out' row 3: 'maybe' is not yes/no"):
        validate_subscribers(month.assign(opt_out=["no", "maybe", "no", "no", "no", "no"]), source="m.csv")


def test_a_training_table_may_spell_its_target_yes_no(tmp_path):
    from engine.data.labelled import load_training_table
    from engine.data.simulator import generate

    month = generate(300, seed=2)
    month.assign(churn=np.where(month["churn"] == 1, "Yes", "No")).to_csv(tmp_path / "words.csv", index=False)
    table = load_training_table(str(tmp_path / "words.csv"))
    assert table.target.tolist() == month["churn"].tolist()
