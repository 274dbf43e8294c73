"""Dagster in production shape: PostgreSQL storage (infra/dagster/dagster.yaml) and `dagster-daemon run`.

A real PostgreSQL on 127.0.0.1 holds runs, event logs and sensor state; a real daemon ticks the sensor
of tests/scale/daemon_location.py, queues and launches its runs. Each `request-<n>` file the test drops
must become exactly one successful run, also when PostgreSQL goes away and comes back under the daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from tests.scale.conftest import PG_PASSWORD, PG_USER, wait_until
from tests.webui import REPO

pytestmark = pytest.mark.slow

DAGSTER_YAML = REPO / "infra" / "dagster" / "dagster.yaml"
WORKSPACE = """load_from:
  - python_module:
      module_name: tests.scale.daemon_location
      working_directory: {repo}
"""


@pytest.fixture
def daemon(postgres, tmp_path, monkeypatch):
    """DAGSTER_HOME with the Postgres dagster.yaml, and `dagster-daemon run` on the tiny code location.

    Yields (instance, requests dir, daemon log path, daemon process)."""
    postgres.create_database("dagster")
    home, requests = tmp_path / "dagster_home", tmp_path / "requests"
    home.mkdir()
    requests.mkdir()
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    (tmp_path / "workspace.yaml").write_text(WORKSPACE.format(repo=REPO))
    settings = {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port),
                "DAGSTER_PG_USER": PG_USER, "DAGSTER_PG_PASSWORD": PG_PASSWORD, "DAGSTER_PG_DB": "dagster",
                "LLMOPS_TEST_REQUESTS": str(requests)}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        # Own session, default SIGINT: a background dagster process otherwise ignores the signals that stop it.
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run",
                                 "-w", str(tmp_path / "workspace.yaml")], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance, requests, log_path, proc
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        instance.dispose()


def _runs_by_key(instance: dg.DagsterInstance) -> dict[str, list[dg.DagsterRun]]:
    runs: dict[str, list[dg.DagsterRun]] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(job_name="heartbeat_job")):
        runs.setdefault(run.tags.get("dagster/run_key"), []).append(run)
    return runs


def _wait_for_success(instance, key: str, log_path: Path, timeout: float = 300) -> dg.DagsterRun:
    def done():
        runs = _runs_by_key(instance).get(key, [])
        failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        assert not failed, f"run for {key} failed; daemon log:\n{log_path.read_text(errors='replace')[-4000:]}"
        return next((r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS), None)

    return wait_until(done, f"successful run for {key}", timeout=timeout, every=2,
                      log=lambda: log_path.read_text(errors="replace")[-4000:])


def _request(requests: Path, n: int) -> str:
    key = f"request-{n:02d}"
    (requests / key).write_text("")
    return key


def test_daemon_runs_sensor_requests_with_postgres_storage_and_survives_a_postgres_restart(daemon, postgres):
    instance, requests, log_path, proc = daemon
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"

    first = _wait_for_success(instance, _request(requests, 1), log_path)
    assert (requests / "done-request-01").read_text() == first.run_id

    # Postgres goes away under the running daemon; a request arrives while it is down.
    postgres.stop()
    during = _request(requests, 2)
    time.sleep(15)  # several sensor and queue ticks fail against the missing database
    postgres.start()
    after = _request(requests, 3)
    for key in (during, after):
        _wait_for_success(instance, key, log_path)

    runs = _runs_by_key(instance)
    assert sorted(runs) == ["request-01", "request-02", "request-03"]
    assert all(len(r) == 1 for r in runs.values()), f"a request ran more than once: {runs}"
    # The runs and their events are rows in Postgres, not files under DAGSTER_HOME.
    with psycopg2.connect(postgres.url("dagster")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] == 3
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cur.fetchone()[0] == 3
    assert not list(Path(os.environ["DAGSTER_HOME"]).glob("**/*.db"))
    # The same daemon process saw the outage and reconnected: it was not restarted.
    assert proc.poll() is None
    assert "Connection refused" in log_path.read_text(errors="replace")
