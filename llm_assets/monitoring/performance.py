"""Serving performance from logged requests, the gateway's Prometheus metrics, and the replicas' processes.

`window_metrics` turns a window of request-log rows into one row per (model, model version, prompt
version) plus an `all` row: request rate, latency and time-to-first-token percentiles, tokens/s and
error rate. `scrape_gateway` adds queue depth and replica liveness from `/metrics`; `replica_resources`
adds CPU and memory of each replica process found by its pid file (`<run_dir>/*.pid`), and where NVML
answers (nvidia-ml-py, the `gpu` extra) the GPU memory its processes hold and the utilization of the GPUs
they run on; without NVML or a GPU the `gpu` field says why and the GPU numbers are NaN.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pandas as pd
import psutil
from prometheus_client.parser import text_string_to_metric_families

GROUP = ["model", "model_version", "prompt_version"]
ALL = "all"


def _pct(values: pd.Series, q: float) -> float:
    values = values.dropna()
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarize(rows: pd.DataFrame) -> dict:
    """The numbers of one group of requests (at least one row)."""
    ok = rows[rows["status"] == 200]
    ends = rows["timestamp"]
    starts = ends - pd.to_timedelta(rows["latency_ms"].fillna(0), unit="ms")
    # The window spans the first request's start to the last one's end; at least a second.
    window_s = max((ends.max() - starts.min()).total_seconds(), 1.0)
    completion = float(ok["completion_tokens"].fillna(0).sum())
    decode_s = (ok["latency_ms"] - ok["ttft_ms"].fillna(0)) / 1000
    per_request = (ok["completion_tokens"].fillna(0) / decode_s.where(decode_s > 0)).dropna()
    return {
        "window_start": starts.min().to_pydatetime(), "window_end": ends.max().to_pydatetime(),
        "window_s": window_s, "requests": int(len(rows)), "errors": int(len(rows) - len(ok)),
        "error_rate": float((len(rows) - len(ok)) / len(rows)), "request_rate_per_s": len(rows) / window_s,
        "latency_p50_ms": _pct(ok["latency_ms"], 50), "latency_p95_ms": _pct(ok["latency_ms"], 95),
        "latency_p99_ms": _pct(ok["latency_ms"], 99), "ttft_p50_ms": _pct(ok["ttft_ms"], 50),
        "ttft_p95_ms": _pct(ok["ttft_ms"], 95), "tokens_per_s": completion / window_s,
        "decode_tokens_per_s_p50": _pct(per_request, 50),
        "prompt_tokens": int(rows["prompt_tokens"].fillna(0).sum()), "completion_tokens": int(completion),
        "retries": int(rows["retries"].fillna(0).sum()),
    }


def window_metrics(rows: pd.DataFrame) -> list[dict]:
    """One summary per (model, model_version, prompt_version), then the `all` row; [] for no rows."""
    if rows.empty:
        return []
    out = [{"model": m, "model_version": v, "prompt_version": p, **summarize(g)}
           for (m, v, p), g in rows.groupby(GROUP, sort=True, dropna=False)]
    return out + [{"model": ALL, "model_version": ALL, "prompt_version": ALL, **summarize(rows)}]


def parse_gateway_metrics(text: str) -> dict:
    """From Prometheus text: queue depth (outstanding requests) and replicas up, per model version."""
    queue: dict[str, float] = {}
    up: dict[str, dict[str, float]] = {}
    requests_total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            version = s.labels.get("version", "")
            if s.name == "gateway_outstanding_requests":
                queue[version] = queue.get(version, 0.0) + s.value
            elif s.name == "gateway_replica_up":
                up.setdefault(version, {})[s.labels.get("replica", "")] = s.value
            elif s.name == "gateway_requests_total":
                requests_total += s.value
    return {"queue_depth": queue, "replica_up": up, "requests_total": requests_total,
            "queue_depth_total": sum(queue.values()),
            "replicas_up": sum(v == 1 for r in up.values() for v in r.values()),
            "replicas_down": sum(v != 1 for r in up.values() for v in r.values())}


def scrape_gateway(url: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[dict | None, str]:
    """(`parse_gateway_metrics` of `url`/metrics, "") or (None, why it could not be read)."""
    try:
        resp = httpx.get(f"{url.rstrip('/')}/metrics", headers=headers or {}, timeout=timeout)
    except httpx.HTTPError as e:
        return None, f"{url}/metrics unreachable: {type(e).__name__}: {e}"
    if resp.status_code != 200:
        return None, f"{url}/metrics answered HTTP {resp.status_code}"
    try:
        return parse_gateway_metrics(resp.text), ""
    except ValueError as e:
        return None, f"{url}/metrics is not Prometheus text: {e}"


def _port(command: list[str]) -> int | None:
    for flag, value in zip(command, command[1:]):
        if flag == "--port" and value.isdigit():
            return int(value)
    return None


def replica_versions(routes_path: str | Path) -> dict[int, str]:
    """Port -> model version of every replica in the gateway's route table (empty when there is none)."""
    path = Path(routes_path)
    if not path.exists():
        return {}
    routes = json.loads(path.read_text())
    out = {}
    for model in routes.get("models", {}).values():
        for version, entry in model.get("versions", {}).items():
            for url in entry.get("replicas", []):
                if (port := urlparse(url).port) is not None:
                    out[port] = version
    return out


def gpu_snapshot(nvml=None) -> dict:
    """Utilization % of each GPU and the GPU memory (MB) each process holds on it, from NVML:
    {"status": "ok", "devices": {index: util %}, "processes": {pid: [(index, MB), ...]}}, or
    {"status": "unavailable: <reason>"}. `nvml` stands in for the `pynvml` module (default: import it)."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return {"status": "unavailable: nvidia-ml-py is not installed (the gpu extra)"}
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        return {"status": f"unavailable: NVML did not start: {e}"}
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            return {"status": "unavailable: NVML sees no GPU"}
        devices, processes = {}, {}
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            devices[i] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = p.usedGpuMemory  # None where the driver does not report it (e.g. in a container)
                processes.setdefault(int(p.pid), []).append((i, float("nan") if used is None else used / 2**20))
        return {"status": "ok", "devices": devices, "processes": processes}
    except nvml.NVMLError as e:
        return {"status": f"unavailable: NVML query failed: {e}"}
    finally:
        nvml.nvmlShutdown()


def gpu_usage(pids: list[int], snapshot: dict) -> dict:
    """The `gpu` status, GPU memory (MB) held by `pids`, and the mean utilization of the GPUs they use."""
    if snapshot["status"] != "ok":
        return {"gpu": snapshot["status"], "gpu_util_percent": float("nan"), "gpu_memory_mb": float("nan")}
    held = [(i, mb) for pid in pids for i, mb in snapshot["processes"].get(pid, [])]
    if not held:
        return {"gpu": "no process on a GPU", "gpu_util_percent": float("nan"), "gpu_memory_mb": 0.0}
    used = sorted({i for i, _ in held})
    return {"gpu": "GPU " + ",".join(map(str, used)),
            "gpu_util_percent": float(np.mean([snapshot["devices"][i] for i in used])),
            "gpu_memory_mb": float(sum(mb for _, mb in held))}


def replica_resources(run_dir: str | Path, sample_s: float = 0.2, nvml=None) -> list[dict]:
    """CPU %, resident memory, and GPU memory and utilization (`gpu_usage`) of each process with a pid file in
    `run_dir` (its children included), with the model version its port serves (from `<run_dir>/routes.json`).
    `nvml` stands in for the `pynvml` module (see `gpu_snapshot`)."""
    versions = replica_versions(Path(run_dir) / "routes.json")
    procs = {}
    for pid_file in sorted(Path(run_dir).glob("*.pid")):
        try:
            rec = json.loads(pid_file.read_text())
            root = psutil.Process(int(rec["pid"]))
            tree = [root, *root.children(recursive=True)]
        except (OSError, ValueError, KeyError, psutil.Error) as e:
            procs[pid_file.stem] = {"error": f"{type(e).__name__}: {e}", "command": []}
            continue
        procs[pid_file.stem] = {"pid": root.pid, "tree": tree, "command": rec.get("command", [])}
        for p in tree:
            try:
                p.cpu_percent(None)  # starts the sampling interval
            except psutil.Error:
                pass
    time.sleep(sample_s)
    gpus = gpu_snapshot(nvml)
    out = []
    for name, rec in procs.items():
        port = _port(rec["command"])
        row = {"name": name, "port": port, "model_version": versions.get(port, ""), "running": False,
               "cpu_percent": float("nan"), "rss_mb": float("nan"), **gpu_usage([], gpus),
               "error": rec.get("error", "")}
        if "tree" in rec:
            cpu = rss = 0.0
            alive = []
            for p in rec["tree"]:
                try:
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss / 2**20
                    alive.append(p.status() != psutil.STATUS_ZOMBIE)
                except psutil.Error:
                    alive.append(False)
            row.update(pid=rec["pid"], running=bool(alive and alive[0]), cpu_percent=cpu, rss_mb=rss,
                       **gpu_usage([p.pid for p in rec["tree"]], gpus))
            if not row["running"]:
                row["error"] = f"pid {rec['pid']} is not running"
        out.append(row)
    return out


def arrival_verdict(new_rows: int, gateway_error: str, last_row_age_s: float | None,
                    max_silence_s: float) -> tuple[bool, str, str]:
    """(passed, severity, why): whether metrics still arrive. No new rows while the gateway cannot be
    scraped means monitoring is blind (ERROR), never "healthy"; a gateway that answers but logged nothing
    for longer than `max_silence_s` is idle or not logging (WARN)."""
    if new_rows == 0 and gateway_error:
        return False, "ERROR", f"no new request-log rows and the gateway cannot be scraped ({gateway_error})"
    if new_rows == 0 and (last_row_age_s is None or last_row_age_s > max_silence_s):
        age = "ever" if last_row_age_s is None else f"for {last_row_age_s:.0f}s"
        return False, "WARN", f"no request-log rows {age} (limit {max_silence_s:.0f}s) although the gateway answers"
    scrape = f"; gateway scrape failed: {gateway_error}" if gateway_error else ""
    return True, "", f"{new_rows} new request-log rows{scrape}"
