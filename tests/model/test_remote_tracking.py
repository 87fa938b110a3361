"""The same commands against a real `mlflow server` process on a free local port (team scale)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine.cli.main import app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited at start-up")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_train_list_promote_against_a_server(mlflow_server, store, month_files, runner):
    args = ["--config", str(store.config), "--tracking-uri", mlflow_server]
    res = runner.invoke(app, ["train", "--data", str(month_files["base"]), "--trials", "1", "--json", *args])
    assert res.exit_code == 0, res.output
    version = json.loads(res.stdout.strip().splitlines()[-1])["model_version"]
    res = runner.invoke(app, ["models", "promote", version, "--alias", "champion", *args])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["models", "list", "--json", *args])
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert any(r["version"] == version and "champion" in r["aliases"] for r in rows)


def test_unreachable_server_is_one_line(store, runner):
    url = f"http://127.0.0.1:{free_port()}"
    res = runner.invoke(app, ["models", "list", "--config", str(store.config), "--tracking-uri", url])
    assert res.exit_code == 2
    assert "not reachable" in res.output and "Traceback" not in res.output
