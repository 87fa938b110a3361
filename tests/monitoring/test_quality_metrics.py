"""Training's hold-out metrics and monitoring's quality metrics are one computation (`engine.model.metrics`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine.model.metrics import calibration_table, expected_calibration_error, probability_metrics
from engine.monitoring.drift import quality_metrics
from training.evaluation import holdout_metrics


def test_expected_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.85])
    # bins 0.0-0.1: 1 row, observed 0, predicted 0.05; 0.1-0.2: 2 rows, 0.5 vs 0.15; 0.8-0.9 and 0.9-1.0: 1 each
    expected = (1 * 0.05 + 2 * abs(0.5 - 0.15) + 1 * abs(1 - 0.85) + 1 * abs(1 - 0.95)) / 5
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert [r["rows"] for r in calibration_table(y, p)] == [1, 2, 1, 1]


def test_training_and_monitoring_report_the_same_numbers():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 5000)
    y = (rng.uniform(0, 1, 5000) < p).astype(int)
    held_out = holdout_metrics(y, p, threshold=0.5)
    monitored = quality_metrics(y.astype(float), p)
    reference = probability_metrics(y, p)
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
        assert held_out[key] == monitored[key] == reference[key], key
    assert 0.7 < reference["roc_auc"] < 0.9 and reference["ece"] < 0.05  # calibrated by construction
    assert quality_metrics(np.ones(10), p[:10]) is None  # one class: nothing to rank


def test_the_drift_check_does_not_import_its_orchestration():
    """engine.monitoring.check imports drift; drift must not import check back (no cycle)."""
    code = "import sys, engine.monitoring.drift; assert 'engine.monitoring.check' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
