"""Shared fixtures of the workbench tests: a copy of the sample policies and a small decisions table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def decisions(tmp_path_factory) -> Path:
    from engine.data.io import write_table
    from engine.policy.synthetic import synthetic_frame

    path = tmp_path_factory.mktemp("workbench-input") / "decisions.parquet"
    write_table(synthetic_frame(2000, seed=21), path)
    return path


@pytest.fixture()
def policies(tmp_path) -> Path:
    """A copy of the project's sample policies in a temporary folder."""
    target = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", target, ignore=shutil.ignore_patterns("README.md"))
    return target


def pytest_terminal_summary(terminalreporter) -> None:
    """Say plainly, even under `pytest -q`, when the browser tests did not run and why."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "tests/workbench/test_workbench_browser.py" in getattr(r, "nodeid", "")]
    if skipped:
        reason = skipped[0].longrepr[2] if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        terminalreporter.write_line(f"workbench browser tests SKIPPED ({len(skipped)}): "
                                    f"{reason.removeprefix('Skipped: ')}", yellow=True, bold=True)
