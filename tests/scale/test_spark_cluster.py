"""The data and token-shard assets on a real Spark cluster and on Spark Connect, by settings only.

A standalone master with two 1-core workers, and a Spark Connect server, run on 127.0.0.1 from the
scripts of the pyspark wheel. Each test materializes raw_documents → token_shards on a tiny corpus
against one of them (SPARK_MASTER=spark://… or sc://…) and compares the kept doc ids and shard
checksums with a `local[*]` run of the same. Every run is its own process (tests/scale/materialize.py):
a process holds one classic SparkContext, and this one already runs the test session's local one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pyspark
import pytest

from resources.spark import BASE_CONF, SparkResource, build_session
from tests.corpus import write_corpus
from tests.webui import REPO, free_port

pytestmark = pytest.mark.slow

SPARK_HOME = Path(pyspark.__file__).parent
STARTUP_S = 240
RUN_S = 900
EXECUTOR_CONF = "spark.executor.memory=512m,spark.executor.cores=1,spark.driver.memory=1g"


def _spark_env(tmp: Path) -> dict[str, str]:
    """The environment of every Spark process here: the wheel as SPARK_HOME, scratch under `tmp`, loopback only."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLMOPS_", "SPARK_", "PYSPARK_", "MLFLOW_", "DAGSTER_"))}
    (tmp / "conf").mkdir(parents=True, exist_ok=True)  # no spark-defaults.conf or log4j from elsewhere
    return {**env, "SPARK_HOME": str(SPARK_HOME), "SPARK_CONF_DIR": str(tmp / "conf"),
            "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(tmp / "logs"), "SPARK_PID_DIR": str(tmp),
            "SPARK_LOCAL_DIRS": str(tmp / "local"), "SPARK_DAEMON_JAVA_OPTS": "-XX:-UsePerfData", "TMPDIR": str(tmp),
            "LLMOPS_SPARK_CDS": "0"}  # a class archive fits one SPARK_CONF_DIR: not worth building for a test's


class Daemon:
    """One Spark JVM in its own process group, its output in a log file; `stop` ends the whole group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], tmp: Path):
        self.name, self.log_path = name, tmp / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop_now(self) -> None:
        """SIGKILL the whole group, as a machine that dies takes its worker and executors with it."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            try:  # the launcher exited; its group may still hold the JVM it started
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return


def _wait_for(ready: Callable[[], bool], what: str, daemons: list[Daemon]) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        for d in daemons:
            if d.proc.poll() is not None:
                raise RuntimeError(f"{d.name} exited with {d.proc.returncode} before {what}:\n{d.log_tail()}")
        if ready():
            return
        time.sleep(1)
    raise TimeoutError(f"no {what} after {STARTUP_S} s:\n" + "\n".join(f"{d.name}: {d.log_tail()}" for d in daemons))


def _json(url: str) -> dict | None:
    try:
        return httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _launch(tmp: Path, source: Path, env: dict[str, str], name: str) -> subprocess.Popen:
    """Start tests/scale/materialize.py with a fresh LLMOPS_HOME (tmp/home-<name>), its stderr in tmp/<name>.log."""
    env = {**env, "LLMOPS_HOME": str(tmp / f"home-{name}"), "LLMOPS_SOURCE": str(source)}
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.scale.materialize"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=log)


def _summary(proc: subprocess.Popen, tmp: Path, name: str) -> dict:
    """The run's JSON summary, once it has finished."""
    try:
        stdout, _ = proc.communicate(timeout=RUN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out = stdout.decode().strip().splitlines()
    assert proc.returncode == 0 and out, (f"{name} run failed ({proc.returncode}):\n"
                                          f"{(tmp / f'{name}.log').read_text(errors='replace')[-4000:]}")
    return json.loads(out[-1])


def _materialize(tmp: Path, source: Path, env: dict[str, str], name: str) -> dict:
    """One run of tests/scale/materialize.py with a fresh LLMOPS_HOME; its JSON summary."""
    return _summary(_launch(tmp, source, env, name), tmp, name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("source"), docs=12)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, corpus) -> dict:
    tmp = tmp_path_factory.mktemp("local")
    result = _materialize(tmp, corpus, _spark_env(tmp), "local")
    assert result["master"] == "local[*]" and result["session"] == "pyspark.sql.session"
    return result


@pytest.fixture
def standalone(tmp_path):
    """A master and two workers of one core and 1 GiB each.

    Yields (master URL, master UI URL, worker UI URLs, worker Daemons)."""
    env = {**_spark_env(tmp_path), "SPARK_DAEMON_MEMORY": "256m"}
    port, ui = free_port(), free_port()
    url, master_ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}"
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    daemons = [Daemon("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                 "--port", str(port), "--webui-port", str(ui)], env, tmp_path)]
    worker_uis = []
    try:
        _wait_for(lambda: (_json(f"{master_ui}/json/") or {}).get("status") == "ALIVE", "master", daemons)
        for i in (1, 2):
            worker_uis.append(f"http://127.0.0.1:{(worker_ui := free_port())}")
            daemons.append(Daemon(f"worker{i}", [
                spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                "--memory", "1g", "--webui-port", str(worker_ui), "--work-dir", str(tmp_path / f"work{i}"), url,
            ], env, tmp_path))
        _wait_for(lambda: (_json(f"{master_ui}/json/") or {}).get("aliveworkers") == 2, "two alive workers", daemons)
        yield url, master_ui, worker_uis, daemons[1:]
    finally:
        for d in reversed(daemons):
            d.stop()


@pytest.fixture
def connect_server(tmp_path):
    """A Spark Connect server (Spark local[2] behind it) with the project's conf; yields its sc:// URL."""
    port = free_port()
    conf = {**BASE_CONF, **SparkResource().conf, "spark.local.dir": str(tmp_path / "local"),
            "spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(port)}
    argv = [str(SPARK_HOME / "sbin" / "start-connect-server.sh"), "--wait", "--master", "local[2]",
            *[arg for k, v in conf.items() for arg in ("--conf", f"{k}={v}")]]
    # The server's heap is SPARK_DAEMON_MEMORY. PYSPARK_PYTHON: the venv's interpreter as invoked, not its
    # resolved symlink, as resources/spark.py sets it for a driver.
    env = {**_spark_env(tmp_path), "SPARK_DAEMON_MEMORY": "1g", "PYSPARK_PYTHON": sys.executable}
    server = Daemon("connect", argv, env, tmp_path)
    try:
        _wait_for(lambda: _port_open(port), "Spark Connect server", [server])
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.stop()


def _assert_same_outputs(run: dict, local: dict) -> None:
    for table, ids in local["doc_ids"].items():
        assert run["doc_ids"][table] == ids, f"{table}: kept doc ids differ from the local[*] run"
    assert run["quarantine"] == local["quarantine"]
    assert run["tokenizer_sha256"] == local["tokenizer_sha256"]
    assert run["shards"] == local["shards"]
    # not vacuous: dedup removed documents, and there are shards in both splits
    assert {"exact_duplicate", "near_duplicate"} <= {rule for _, rule in local["quarantine"]}
    assert local["shards"]["train"] and local["shards"]["validation"]


def test_a_cluster_master_is_not_answered_by_the_running_local_session(spark, tmp_path):
    with pytest.raises(RuntimeError, match="already runs a SparkContext on 'local"):
        build_session("spark://127.0.0.1:7077", {}, str(tmp_path))


def test_standalone_cluster_gives_the_local_outputs(standalone, local_run, corpus, tmp_path):
    url, master_ui, worker_uis, _ = standalone
    env = {**_spark_env(tmp_path), "SPARK_MASTER": url, "LLMOPS_SPARK_CONF": EXECUTOR_CONF}
    run = _materialize(tmp_path, corpus, env, "standalone")
    assert run["master"] == url and run["session"] == "pyspark.sql.session"
    _assert_same_outputs(run, local_run)
    apps = _json(f"{master_ui}/json/")["completedapps"]
    assert [a["name"] for a in apps] == ["llmops"]
    for ui in worker_uis:  # each worker ran an executor of the run
        assert _json(f"{ui}/json/")["finishedexecutors"], f"worker {ui} ran no executor"


def test_spark_connect_gives_the_local_outputs(connect_server, local_run, corpus, tmp_path):
    env = {**_spark_env(tmp_path), "SPARK_MASTER": connect_server}
    run = _materialize(tmp_path, corpus, env, "connect")
    assert run["session"] == "pyspark.sql.connect.session" and run["master"] == "local[2]"
    _assert_same_outputs(run, local_run)


def test_standalone_run_finishes_on_the_remaining_worker_when_one_is_killed(standalone, local_run, corpus, tmp_path):
    url, master_ui, worker_uis, workers = standalone
    env = {**_spark_env(tmp_path), "SPARK_MASTER": url, "LLMOPS_SPARK_CONF": EXECUTOR_CONF}
    proc = _launch(tmp_path, corpus, env, "fault")
    first_table = tmp_path / "home-fault" / "lakehouse" / "raw_documents" / "_delta_log"

    def mid_run() -> bool:
        assert proc.poll() is None, f"the run ended before the fault:\n{(tmp_path / 'fault.log').read_text()[-4000:]}"
        return first_table.exists() and bool((_json(f"{worker_uis[0]}/json/") or {}).get("executors"))

    # Mid-run: the first asset committed, the rest (cleaning, dedup, tokenizer, shards) still to come.
    _wait_for(mid_run, "executor on worker1 with the first table committed", [])
    workers[0].stop_now()
    run = _summary(proc, tmp_path, "fault")

    _assert_same_outputs(run, local_run)
    assert workers[0].proc.poll() is not None
    assert "Lost executor" in (tmp_path / "fault.log").read_text(errors="replace")  # the driver saw it go
    survivor = _json(f"{worker_uis[1]}/json/")
    assert survivor["finishedexecutors"] or survivor["executors"], "the surviving worker ran no executor"
    apps = _json(f"{master_ui}/json/")["completedapps"]
    assert [a["name"] for a in apps] == ["llmops"]
