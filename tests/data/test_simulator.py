"""The built-in simulator and `retain data`: valid, deterministic, realistic, with recoverable reasons.

Why these checks: every other part of the engine is demonstrated and tested on this data. If the labels
were not learnable, the reasons not identifiable from their signal families, or a scenario moved other
inputs than it claims, the model, reason and drift tests built on top would prove nothing.
"""

from __future__ import annotations

from typing import Any

import click
import numpy as np
import pandas as pd
import pytest
import typer
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from typer.core import TyperGroup
from typer.testing import CliRunner

from engine.cli.data import app as data_app
from engine.data.io import read_table, write_table
from engine.data.schema import (
    PREPAID_PLANS,
    REASON_LABEL,
    REASONS,
    SUBSCRIBER_COLUMNS,
    TARGET,
    validate_subscribers,
)
from engine.data.simulator import REGIONS, SCENARIOS, Scenario, generate, get_scenario, summary
from engine.errors import DataError, RetainError
from engine.model.features import add_derived

N = 20_000
LABELS = [TARGET, REASON_LABEL]
NOT_FEATURES = {"subscriber_id", TARGET, REASON_LABEL}


def _plain_ids(df: pd.DataFrame) -> pd.DataFrame:
    """Ids as plain strings: the Arrow-backed ids read back from Parquet with another string storage."""
    return df.assign(subscriber_id=df["subscriber_id"].astype(object))


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return generate(N, seed=1)


@pytest.fixture(scope="module")
def same() -> pd.DataFrame:
    return generate(N, seed=2)


# ---------------------------------------------------------------------------------------------
# Shape, schema, determinism
# ---------------------------------------------------------------------------------------------
def test_columns_are_the_schema_plus_labels(base):
    assert list(base.columns) == [c.name for c in SUBSCRIBER_COLUMNS] + LABELS
    assert len(base) == N


def test_passes_schema_validation(base):
    validate_subscribers(base, require_target=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip_through_files_still_validates(base, tmp_path, suffix):
    path = write_table(base.head(3000), tmp_path / f"month{suffix}")
    back = read_table(path)
    validated = validate_subscribers(back, require_target=True)
    assert len(validated) == 3000
    assert back[TARGET].tolist() == base[TARGET].head(3000).tolist()
    if suffix == ".parquet":
        pd.testing.assert_frame_equal(_plain_ids(back), _plain_ids(base.head(3000)))


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = generate(3000, seed=7), generate(3000, seed=7), generate(3000, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["arpu_m0"].equals(c["arpu_m0"])


def test_ids_are_positional_unique_and_shared_across_seeds(base, same):
    assert base["subscriber_id"].iloc[0] == "S0000001"
    assert base["subscriber_id"].iloc[-1] == f"S{N:07d}"
    assert base["subscriber_id"].is_unique
    assert base["subscriber_id"].tolist() == same["subscriber_id"].tolist()


def test_a_scenario_keeps_the_profiles_of_its_seed(base):
    outage = generate(N, seed=1, scenario="network_outage")
    for col in ("plan", "region", "tenure_months", "age_group", "arpu_m0", "data_gb_m1"):
        assert outage[col].equals(base[col]), col


def test_bad_arguments_raise_data_errors():
    with pytest.raises(DataError, match="positive"):
        generate(0)
    with pytest.raises(DataError, match="seed"):
        generate(10, seed=-1)
    with pytest.raises(DataError) as info:
        generate(10, scenario="alien_invasion")
    assert "alien_invasion" in str(info.value)
    for name in SCENARIOS:
        assert name in str(info.value)
    assert get_scenario("baseline").name == "baseline"


# ---------------------------------------------------------------------------------------------
# Realism and internal consistency
# ---------------------------------------------------------------------------------------------
def test_profile_is_internally_consistent(base):
    prepaid = base["plan"].isin(PREPAID_PLANS)
    assert base.loc[prepaid, "contract_months_left"].isna().all()
    assert (base.loc[prepaid, "topup_count"] >= 1).all()
    assert (base.loc[~prepaid, "topup_count"] == 0).all()
    assert (base.loc[~prepaid, "topup_avg_amount"] == 0).all()
    assert base.loc[~prepaid, "contract_months_left"].notna().mean() > 0.7
    assert 0.05 <= base["opt_out"].mean() <= 0.10
    assert set(base["region"].astype(str)) == set(REGIONS)
    # idle for a whole month means no usage this month
    idle = base["days_inactive"] >= 30
    assert idle.any()
    assert (base.loc[idle, "data_gb_m0"] == 0).all() and (base.loc[idle, "voice_min_m0"] == 0).all()
    # plans are priced in order: premium and family plans cost more than prepaid basic
    arpu = base.groupby("plan", observed=True)["arpu_m2"].median()
    assert arpu["prepaid_basic"] < arpu["postpaid_standard"] < arpu["postpaid_premium"]
    assert base["satisfaction_score"].between(0, 10).all()


def test_weak_network_region_complains_more(base):
    complaints = base.groupby("region", observed=True)["complaints_3m"].mean()
    assert complaints.idxmax() == "highlands"


def test_long_tenure_protects(base):
    short = base.loc[base["tenure_months"] < 12, TARGET].mean()
    long = base.loc[base["tenure_months"] >= 60, TARGET].mean()
    assert long < short


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_churn_rate_is_realistic(seed):
    rate = generate(N, seed=seed)[TARGET].mean()
    assert 0.15 <= rate <= 0.30
    assert abs(rate - 0.22) < 0.03


def test_every_churner_has_a_reason_and_stayers_none(base):
    churn = base[TARGET] == 1
    assert set(base[TARGET].unique()) == {0, 1}
    assert base.loc[churn, REASON_LABEL].notna().all()
    assert base.loc[~churn, REASON_LABEL].isna().all()
    assert set(base.loc[churn, REASON_LABEL].astype(str)) == set(REASONS)


def test_reason_mix_is_balanced(base):
    mix = summary(base)["reasons"]
    assert abs(sum(mix.values()) - 1.0) < 1e-9
    for reason in REASONS:
        assert 0.04 <= mix[reason] <= 0.40, (reason, mix)


#: For each reason, a signal of its family and the direction in which its churners stand out.
REASON_SIGNALS = {
    "price": ("out_of_package_share", +1),
    "network": ("complaints_3m", +1),
    "usage_decline": ("days_inactive", +1),
    "competitor": ("competitor_contact", +1),
    "balance": ("topup_count", +1),
    "contract_end": ("contract_months_left", -1),
}


@pytest.mark.parametrize("reason", REASONS)
def test_churners_of_a_reason_stand_out_on_its_signals(base, reason):
    """Churners of reason r differ on r's signals from stayers and from churners of other reasons."""
    df = add_derived(base)
    column, direction = REASON_SIGNALS[reason]
    mine = df[REASON_LABEL] == reason
    others = (df[TARGET] == 1) & ~mine
    stayers = df[TARGET] == 0
    values = df[column].astype(float)
    m, o, s = values[mine].mean(), values[others].mean(), values[stayers].mean()
    spread = values.std()
    assert direction * (m - o) > 0.5 * spread, (reason, m, o, s)
    assert direction * (m - s) > 0.5 * spread, (reason, m, o, s)


def test_price_and_usage_changes_speak_for_their_reasons(base):
    df = add_derived(base)
    by_reason = df[df[TARGET] == 1].groupby(REASON_LABEL, observed=True)
    assert by_reason["arpu_change"].mean().idxmax() == "price"
    assert by_reason["data_change"].mean().idxmin() == "usage_decline"
    prepaid = df["plan"].isin(PREPAID_PLANS)
    balance = df[prepaid & (df[TARGET] == 1)].groupby(REASON_LABEL, observed=True)["balance"].mean()
    assert balance.idxmin() == "balance"


# ---------------------------------------------------------------------------------------------
# Drift scenarios
# ---------------------------------------------------------------------------------------------
DRIFT_THRESHOLD = 0.1  # Evidently's default for > 1,000 rows (normed Wasserstein / Jensen-Shannon)


def drift_scores(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, float]:
    """Per-column drift as Evidently measures it by default on big samples.

    Numeric columns with more than 5 values: Wasserstein distance over the reference's standard deviation;
    others (categorical, boolean): Jensen-Shannon distance of the value shares.
    """
    out = {}
    for col in reference.columns:
        if col in NOT_FEATURES:
            continue
        ref, cur = reference[col], current[col]
        numeric = pd.api.types.is_numeric_dtype(ref) and not pd.api.types.is_bool_dtype(ref)
        if numeric and ref.nunique() > 5:
            ref, cur = ref.dropna().astype(float), cur.dropna().astype(float)
            out[col] = wasserstein_distance(ref, cur) / (ref.std() or 1.0)
        else:
            levels = sorted(set(ref.astype(str)) | set(cur.astype(str)))
            p = ref.astype(str).value_counts(normalize=True).reindex(levels, fill_value=0)
            q = cur.astype(str).value_counts(normalize=True).reindex(levels, fill_value=0)
            out[col] = float(jensenshannon(p, q))
    return out


def test_scenarios_are_declared():
    assert {"baseline", "competitor_campaign", "network_outage", "mechanism_change"} <= set(SCENARIOS)
    for name, sc in SCENARIOS.items():
        assert isinstance(sc, Scenario) and sc.name == name and sc.description
        schema = {c.name for c in SUBSCRIBER_COLUMNS}
        assert set(sc.moved_features) <= schema
    assert SCENARIOS["baseline"].moved_features == ()
    assert SCENARIOS["mechanism_change"].moved_features == ()
    with pytest.raises(AttributeError):
        SCENARIOS["baseline"].name = "x"  # type: ignore[misc]


def test_baseline_with_another_seed_does_not_drift(base, same):
    scores = drift_scores(add_derived(base), add_derived(same))
    assert max(scores.values()) < 0.05, sorted(scores.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "baseline"])
def test_scenario_moves_exactly_its_moved_features(base, name):
    """Moved inputs drift clearly (> 1.5x the threshold); everything else stays well below it."""
    sc = SCENARIOS[name]
    scores = drift_scores(add_derived(base), add_derived(generate(N, seed=3, scenario=name)))
    moved = set(sc.moved_features) | set(sc.moved_derived)
    for col, score in scores.items():
        if col in moved:
            assert score > 1.5 * DRIFT_THRESHOLD, (name, col, score)
        else:
            assert score < 0.5 * DRIFT_THRESHOLD, (name, col, score)


def test_competitor_campaign_raises_contacts_and_price_churn(base):
    camp = generate(N, seed=3, scenario="competitor_campaign")
    assert camp["competitor_contact"].mean() > 3 * base["competitor_contact"].mean()
    assert camp["out_of_package_share"].mean() > base["out_of_package_share"].mean() + 0.03
    price = lambda df: ((df[REASON_LABEL] == "price").mean())  # noqa: E731 - share of all subscribers
    assert price(camp) > 1.5 * price(base)


def test_network_outage_is_concentrated_in_one_region(base):
    out = generate(N, seed=1, scenario="network_outage")
    rise = (out.groupby("region", observed=True)["complaints_3m"].mean()
            - base.groupby("region", observed=True)["complaints_3m"].mean())
    assert rise.idxmax() == "north"
    assert rise.drop("north").abs().max() < 0.1 * rise["north"]
    assert (out[REASON_LABEL] == "network").mean() > (base[REASON_LABEL] == "network").mean()


# ---------------------------------------------------------------------------------------------
# Learnability: a CatBoost learns it, its SHAP families find the true reasons, mechanism_change hurts it
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(base) -> dict[str, Any]:
    import catboost

    from engine.config import load_settings
    from engine.data.schema import DatasetConfig
    from engine.model.features import FeaturePipeline

    cfg = DatasetConfig.builtin()
    pipe = FeaturePipeline(cfg.categorical, cfg.numeric).fit(base)
    model = catboost.CatBoostClassifier(iterations=250, depth=6, learning_rate=0.1, random_seed=0,
                                        thread_count=2, verbose=0)
    model.fit(catboost.Pool(pipe.transform(base), base[TARGET], cat_features=pipe.categorical_features_))

    def score(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, catboost.Pool]:
        feats = pipe.transform(df)
        pool = catboost.Pool(feats, cat_features=pipe.categorical_features_)
        return feats, model.predict_proba(pool)[:, 1], pool

    return {"model": model, "score": score, "families": load_settings(None).reasons}


def test_catboost_learns_the_labels_without_being_perfect(fitted, same):
    from sklearn.metrics import roc_auc_score

    _, p, _ = fitted["score"](same)
    auc = roc_auc_score(same[TARGET], p)
    assert 0.78 <= auc <= 0.92, auc


def test_shap_families_recover_the_true_reason_of_high_risk_churners(fitted, same):
    from engine.model.reasons import reasons_from_shap

    feats, p, pool = fitted["score"](same)
    shap = fitted["model"].get_feature_importance(pool, type="ShapValues", shap_calc_type="Approximate")
    shap = shap[:, :-1]  # the last column is the base value
    found = reasons_from_shap(shap, list(feats.columns), fitted["families"])["reason"].to_numpy()
    high = (same[TARGET].to_numpy() == 1) & (p >= 0.5)
    assert high.sum() > 500
    hit = (found[high] == same[REASON_LABEL].astype(str).to_numpy()[high]).mean()
    assert hit >= 0.9, hit


def test_mechanism_change_drops_auc_without_data_drift(fitted, same):
    from sklearn.metrics import roc_auc_score

    changed = generate(N, seed=2, scenario="mechanism_change")
    _, p_same, _ = fitted["score"](same)
    _, p_changed, _ = fitted["score"](changed)
    drop = roc_auc_score(same[TARGET], p_same) - roc_auc_score(changed[TARGET], p_changed)
    assert drop > 0.08, drop


@pytest.mark.slow
def test_evidently_flags_exactly_the_moved_features(base):
    """The real drift library agrees with the declared moved features (slow: ~4 s per scenario)."""
    import evidently  # noqa: F401
    from evidently import Report
    from evidently.presets import DataDriftPreset

    reference = base.drop(columns=list(NOT_FEATURES))
    for name, sc in SCENARIOS.items():
        current = generate(N, seed=3, scenario=name).drop(columns=list(NOT_FEATURES))
        result = Report([DataDriftPreset()]).run(current, reference).dict()
        flagged = {m["config"]["column"] for m in result["metrics"]
                   if m.get("metric_name", "").startswith("ValueDrift")
                   and m["value"] > m["config"].get("threshold", DRIFT_THRESHOLD)}
        assert flagged == set(sc.moved_features), (name, flagged)


# ---------------------------------------------------------------------------------------------
# CLI: `retain data ...`
# ---------------------------------------------------------------------------------------------
class _Root(TyperGroup):
    """Catches RetainError like the real root group in engine/cli.py: one line on stderr, exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetainError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


root = typer.Typer(cls=_Root, no_args_is_help=True, add_completion=False)
root.add_typer(data_app, name="data")


@pytest.fixture()
def cli(monkeypatch) -> CliRunner:
    """A runner with a wide console, so table cells are not folded mid-word in assertions."""
    import engine.cli.data

    monkeypatch.setattr(engine.cli.data.console, "width", 250)
    return CliRunner()


@pytest.mark.parametrize("name,fmt", [("month.parquet", None), ("month.csv", None), ("month", "csv")])
def test_generate_writes_a_valid_table(cli, tmp_path, name, fmt):
    out = tmp_path / "nested" / name
    args = ["data", "generate", "--rows", "2000", "--seed", "5", "--out", str(out)]
    res = cli.invoke(root, [*args, *(["--format", fmt] if fmt else [])])
    assert res.exit_code == 0, res.output
    path = out if out.suffix else out.with_suffix(".csv")
    df = read_table(path)
    validate_subscribers(df, require_target=True)
    assert len(df) == 2000
    assert df[TARGET].tolist() == generate(2000, seed=5)[TARGET].tolist()
    line = " ".join(res.stdout.split())
    assert "2,000 subscribers" in line and "churn rate" in line and "price" in line and path.name in line
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_generate_with_drift(cli, tmp_path):
    out = tmp_path / "drifted.parquet"
    args = ["data", "generate", "--rows", "1500", "--drift", "network_outage", "--out", str(out)]
    res = cli.invoke(root, args)
    assert res.exit_code == 0, res.output
    expected = generate(1500, seed=0, scenario="network_outage")
    pd.testing.assert_frame_equal(_plain_ids(read_table(out)), _plain_ids(expected))


@pytest.mark.parametrize("args,expected", [
    (["--rows", "0"], "--rows must be a positive"),
    (["--rows", "-5"], "--rows must be a positive"),
    (["--drift", "alien_invasion"], "unknown scenario 'alien_invasion'"),
    (["--seed", "-1"], "seed must be a whole number >= 0"),
    (["--out-suffix", ".xlsx"], "unsupported output type '.xlsx'"),
    (["--format", "json"], "unsupported format 'json'"),
    (["--format", "csv"], "disagrees with the file name"),
])
def test_bad_options_exit_2_with_one_line(cli, tmp_path, args, expected):
    out = tmp_path / "x.parquet"
    if args[0] == "--out-suffix":
        out, args = tmp_path / f"x{args[1]}", []
    res = cli.invoke(root, ["data", "generate", "--rows", "100", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert not out.exists()


def test_scenarios_command_lists_moved_features(cli):
    res = cli.invoke(root, ["data", "scenarios"])
    assert res.exit_code == 0, res.output
    for name, sc in SCENARIOS.items():
        assert name in res.stdout
        for feature in sc.moved_features:
            assert feature in res.stdout


def test_schema_command_shows_every_column(cli):
    res = cli.invoke(root, ["data", "schema"])
    assert res.exit_code == 0, res.output
    for col in [c.name for c in SUBSCRIBER_COLUMNS] + LABELS:
        assert col in res.stdout


def test_every_command_and_option_has_help(cli):
    for command in ("generate", "scenarios", "schema"):
        res = cli.invoke(root, ["data", command, "--help"], terminal_width=200)
        assert res.exit_code == 0
    group = typer.main.get_command(data_app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), (name, param.name)


def test_mounted_in_the_real_cli(cli, tmp_path):
    """Through `retain data` itself, as users run it."""
    from engine.cli.main import app

    res = cli.invoke(app, ["data", "generate", "--rows", "0", "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2 and "--rows must be a positive" in res.output
    res = cli.invoke(app, ["data", "generate", "--rows", "500", "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 0, res.output
