"""`retain drift history`: past checks per model version and reference data set, as a table and a trend chart.

One line per series: a model version judged against one reference data set (identified by a fingerprint of
its content, logged with every check). Checks of unrelated data sets are separate lines, never one trend.

Why a chart and not only the table: a slow decay (the score drifting 0.02 a month, AUC slipping a point
at a time) is invisible check by check and obvious as a line approaching its threshold. The page is a
static file (PNG inlined) so it can be mailed or archived next to the reports.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from engine.config import Settings
from engine.data.io import staged_outputs

HISTORY_HTML, HISTORY_CSV = "history.html", "history.csv"
_STATUS_COLOURS = {"healthy": "#1b7f3b", "drift": "#d98b00", "decay": "#b00020"}


def trend_png(frame: pd.DataFrame, settings: Settings) -> bytes:
    """Three panels over time: drifted-feature share, score drift / risk-mix PSI, ROC AUC vs reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = settings.drift
    df = frame.assign(when=pd.to_datetime(frame["checked_at"]))
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    panels = [
        (axes[0], [("drifted_share", "drifted feature share")], [(cfg.drift_share, "alert")]),
        (axes[1], [("score_drift", "score drift (Wasserstein)"), ("risk_mix_psi", "risk-mix PSI")],
         [(cfg.score_threshold, "score alert"), (cfg.risk_mix_threshold, "PSI alert")]),
        (axes[2], [("roc_auc", "ROC AUC"), ("reference_roc_auc", "reference ROC AUC")], []),
    ]
    for ax, series, lines in panels:
        for name, group in df.groupby("series", sort=True):
            for column, label in series:
                values = pd.to_numeric(group[column], errors="coerce")
                if values.notna().any():
                    ax.plot(group["when"], values, marker="o", label=f"{name}: {label}")
                    ax.scatter(group["when"], values, c=[_STATUS_COLOURS.get(s, "grey") for s in group["status"]],
                               zorder=3, s=30)
        by_value: dict[float, list[str]] = {}
        for value, label in lines:
            by_value.setdefault(value, []).append(label)
        for value, labels in by_value.items():
            ax.axhline(value, linestyle="--", color="grey", linewidth=1)
            ax.annotate(" / ".join(labels), (1.0, value), xycoords=("axes fraction", "data"), fontsize=8,
                        color="grey", va="bottom", ha="right")
        if ax.has_data():
            ax.legend(fontsize=8, loc="best")
    axes[0].set_title("Drift checks per model version and reference data set (points coloured by status: "
                      "green healthy, orange drift, red decay)", fontsize=10)
    axes[2].set_xlabel("check time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def history_html(frame: pd.DataFrame, settings: Settings, title: str) -> str:
    """A self-contained page: the chart (inline PNG) above one table of checks per series, newest last."""
    image = base64.b64encode(trend_png(frame, settings)).decode("ascii") if len(frame) else ""
    tables = []
    for name, group in (frame.groupby("series", sort=True) if len(frame) else []):
        tables.append(f"<h3>{html.escape(str(name))}</h3>"
                      + group.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4f}", border=0))
    table = "".join(tables)
    body = (f'<img alt="drift trend" src="data:image/png;base64,{image}">' if image
            else "<p>No drift checks logged yet.</p>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:24px}}"
            "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"
            "</style></head><body>"
            f"<h2>{html.escape(title)}</h2>{body}{table}</body></html>\n")


def write_history(frame: pd.DataFrame, settings: Settings, out: str | Path, *, title: str) -> dict[str, Path]:
    """history.html (chart + table) and history.csv, published together."""
    out = Path(out)
    with staged_outputs(out) as stage:
        (stage / HISTORY_HTML).write_text(history_html(frame, settings, title), encoding="utf-8")
        frame.to_csv(stage / HISTORY_CSV, index=False)
    return {"html": out / HISTORY_HTML, "csv": out / HISTORY_CSV}
