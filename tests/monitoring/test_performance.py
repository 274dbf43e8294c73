"""Performance numbers from request-log rows, a real Prometheus endpoint, and real replica processes."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from llm_assets.deployment.processes import free_port
from llm_assets.monitoring import performance
from llm_assets.monitoring.requestlog import REQUEST_FIELDS, validate
from tests.monitoring.logs import request_row


def frame(rows):
    df = pd.DataFrame([validate(r, REQUEST_FIELDS) for r in rows])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


def test_window_metrics_per_version_and_overall():
    rows = ([request_row(i, latency_ms=100.0 * (i + 1), ttft_ms=10.0 * (i + 1)) for i in range(4)]
            + [request_row(4, version="4", latency_ms=500.0), request_row(5, version="4", status=503)])
    groups = performance.window_metrics(frame(rows))
    v3, v4, overall = groups
    assert (v3["model_version"], v4["model_version"], overall["model_version"]) == ("3", "4", "all")
    assert v3["requests"] == 4 and v3["error_rate"] == 0.0
    assert v3["latency_p50_ms"] == 250.0 and v3["latency_p99_ms"] == pytest.approx(397.0)
    assert v3["ttft_p50_ms"] == 25.0
    # 4 requests end at t0+0..3 s, the first started 0.1 s before t0: 3.1 s window, 40 tokens
    assert v3["window_s"] == pytest.approx(3.1) and v3["tokens_per_s"] == pytest.approx(40 / 3.1)
    assert v4["errors"] == 1 and v4["error_rate"] == 0.5 and v4["latency_p95_ms"] == 500.0
    assert overall["requests"] == 6 and overall["error_rate"] == pytest.approx(1 / 6)
    assert performance.window_metrics(frame(rows).iloc[0:0]) == []


@pytest.fixture
def prometheus():
    """A real Prometheus HTTP endpoint with the gateway's metric names."""
    registry = CollectorRegistry()
    outstanding = Gauge("gateway_outstanding_requests", "", ["model", "version", "replica"], registry=registry)
    up = Gauge("gateway_replica_up", "", ["model", "version", "replica"], registry=registry)
    requests = Counter("gateway_requests", "", ["model", "version", "status"], registry=registry)
    outstanding.labels("m", "3", "r1").set(2)
    outstanding.labels("m", "3", "r2").set(1)
    outstanding.labels("m", "4", "r3").set(4)
    up.labels("m", "3", "r1").set(1)
    up.labels("m", "3", "r2").set(0)
    up.labels("m", "4", "r3").set(1)
    requests.labels("m", "3", "200").inc(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def test_scrape_gateway_queue_depth_and_replicas(prometheus):
    got, error = performance.scrape_gateway(prometheus)
    assert error == ""
    assert got["queue_depth"] == {"3": 3.0, "4": 4.0} and got["queue_depth_total"] == 7.0
    assert got["replicas_up"] == 2 and got["replicas_down"] == 1 and got["requests_total"] == 7.0


def test_scrape_of_a_dead_gateway_says_why():
    got, error = performance.scrape_gateway(f"http://127.0.0.1:{free_port()}", timeout=1)
    assert got is None and "unreachable" in error


def test_replica_resources_of_real_processes(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 << 20); time.sleep(60)",
                             "--port", str(port)])
    try:
        (tmp_path / "backend-1.pid").write_text(json.dumps(
            {"pid": proc.pid, "command": ["python", "serve", "--port", str(port)], "log": ""}))
        (tmp_path / "backend-2.pid").write_text(json.dumps({"pid": 999999999, "command": [], "log": ""}))
        (tmp_path / "routes.json").write_text(json.dumps({"models": {"m": {"versions": {
            "3": {"weight": 1.0, "replicas": [f"http://127.0.0.1:{port}"]}}}}}))
        import time
        time.sleep(0.5)  # let it allocate
        live, dead = performance.replica_resources(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    assert live["running"] and live["model_version"] == "3" and live["rss_mb"] > 40
    assert not dead["running"] and dead["error"]


@pytest.mark.parametrize("new_rows,error,age,passed,severity", [
    (5, "", 1.0, True, ""),
    (5, "connection refused", 1.0, True, ""),          # rows arrive: the log is the source
    (0, "connection refused", 10.0, False, "ERROR"),   # silent log and dead gateway: blind, never healthy
    (0, "", 10.0, True, ""),                           # quiet for a moment
    (0, "", 7200.0, False, "WARN"),                    # quiet past the limit
    (0, "", None, False, "WARN"),                      # never logged anything
])
def test_arrival_verdict(new_rows, error, age, passed, severity):
    ok, sev, why = performance.arrival_verdict(new_rows, error, age, max_silence_s=3600)
    assert (ok, sev) == (passed, severity) and why


class FakeNVML:
    """A stand-in for the `pynvml` module (this machine has no GPU): two devices, the given processes on each."""

    class NVMLError(Exception):
        pass

    def __init__(self, utilization, processes, init_error=None):
        self.utilization, self.processes, self.init_error, self.calls = utilization, processes, init_error, []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.utilization)

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"handle-{i}"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self.utilization[int(handle.split("-")[1])], memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used)
                for pid, used in self.processes.get(int(handle.split("-")[1]), [])]


@pytest.fixture
def replica_dir(tmp_path):
    """A run dir with the pid file of a real running process (a replica) and of a dead one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "backend-1.pid").write_text(json.dumps({"pid": proc.pid, "command": ["serve", "--port", "1"]}))
    (tmp_path / "backend-2.pid").write_text(json.dumps({"pid": 999999999, "command": []}))
    yield tmp_path, proc.pid
    proc.kill()
    proc.wait()


def test_replica_gpu_usage_with_fake_nvml(replica_dir):
    run_dir, pid = replica_dir
    nvml = FakeNVML([35, 80], {0: [(12345, 512 * 2**20)], 1: [(pid, 3 * 2**30)]})
    live, dead = performance.replica_resources(run_dir, sample_s=0.05, nvml=nvml)
    assert live["running"] and live["gpu"] == "GPU 1"
    assert live["gpu_util_percent"] == 80.0 and live["gpu_memory_mb"] == 3072.0
    assert dead["gpu"] == "no process on a GPU" and dead["gpu_memory_mb"] == 0.0
    assert nvml.calls == ["init", "shutdown"]
    # on two GPUs, one of which does not report memory (as in some containers)
    both = FakeNVML([20, 60], {0: [(pid, 2**30)], 1: [(pid, None)]})
    (live, _) = performance.replica_resources(run_dir, sample_s=0.05, nvml=both)
    assert live["gpu"] == "GPU 0,1" and live["gpu_util_percent"] == 40.0 and math.isnan(live["gpu_memory_mb"])


def test_fake_nvml_that_fails_or_sees_no_gpu_reports_unavailable(replica_dir):
    run_dir, _ = replica_dir
    broken = FakeNVML([], {}, init_error="Driver Not Loaded")
    assert performance.gpu_snapshot(broken) == {"status": "unavailable: NVML did not start: Driver Not Loaded"}
    live, _ = performance.replica_resources(run_dir, sample_s=0.05, nvml=FakeNVML([], {}))
    assert live["running"] and live["gpu"] == "unavailable: NVML sees no GPU"
    assert math.isnan(live["gpu_util_percent"]) and math.isnan(live["gpu_memory_mb"])


def test_gpu_fields_on_this_machine_say_unavailable(replica_dir):
    """The real NVML path: without nvidia-ml-py, or without a GPU driver, the fields say why; nothing fails."""
    status = performance.gpu_snapshot()["status"]
    if status == "ok":
        pytest.skip("NVML answers on this machine: the fake_nvml tests cover the GPU path")
    run_dir, _ = replica_dir
    live, _ = performance.replica_resources(run_dir, sample_s=0.05)
    assert status.startswith("unavailable: ") and live["gpu"] == status and live["running"]
    assert math.isnan(live["gpu_util_percent"]) and math.isnan(live["gpu_memory_mb"])
