"""Health of the components a live model depends on, one row per component.

Every check returns a row (component, kind, healthy, detail, latency_ms, numbers) and never raises for
the component being down: an unreachable vector DB is a red row, not a crash.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from llm_assets.deployment import processes


def row(component: str, kind: str, healthy: bool, detail: str, latency_ms: float | None = None,
        **numbers) -> dict:
    return {"component": component, "kind": kind, "healthy": healthy, "detail": detail,
            "latency_ms": latency_ms, "numbers": json.dumps(numbers, default=str)}


def http_health(component: str, kind: str, url: str, timeout: float = 3.0) -> dict:
    """GET `url`/health: healthy on HTTP 200."""
    start = time.perf_counter()
    try:
        resp = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as e:
        return row(component, kind, False, f"{url}/health unreachable: {type(e).__name__}: {e}")
    ms = (time.perf_counter() - start) * 1000
    if resp.status_code != 200:
        return row(component, kind, False, f"{url}/health answered HTTP {resp.status_code}", ms)
    return row(component, kind, True, f"{url}/health answered 200", ms)


def replicas(routes_path: str | Path) -> list[tuple[str, str, str]]:
    """(model, version, replica url) of every replica in the gateway's route table."""
    path = Path(routes_path)
    if not path.exists():
        return []
    routes = json.loads(path.read_text())
    return [(model, version, url) for model, entry in routes.get("models", {}).items()
            for version, v in entry.get("versions", {}).items() for url in v.get("replicas", [])]


def replica_health(routes_path: str | Path, timeout: float = 3.0) -> list[dict]:
    """One row per replica of the route table, by its own /health."""
    return [{**http_health(f"replica {model} v{version} {url}", "replica", url, timeout)}
            for model, version, url in replicas(routes_path)]


def process_health(run_dir: str | Path) -> list[dict]:
    """One row per pid file in `run_dir`: is the process still running."""
    out = []
    for name, rec in processes.status(run_dir).items():
        out.append(row(f"process {name}", "process", rec["running"],
                       f"pid {rec['pid']} {'running' if rec['running'] else 'not running'}", pid=rec["pid"]))
    return out


def vector_db_health(uri: str | Path, table: str, latest_data_commit: str | None,
                     probe: Callable[[object], dict] | None = None) -> dict:
    """The LanceDB index: opens, has rows, was built from the latest data commit; `probe(table)` (e.g.
    `rag.probe_latency`) measures a query."""
    import lancedb

    start = time.perf_counter()
    try:
        if not Path(uri).is_dir() and "://" not in str(uri):
            raise FileNotFoundError(f"no LanceDB directory at {uri}")
        t = lancedb.connect(str(uri)).open_table(table)
        rows = t.count_rows()
        meta = t.schema.metadata or {}
        built_from = meta.get(b"data_commit", b"").decode()
        query = probe(t) if probe else {}
    except Exception as e:  # noqa: BLE001 - any failure to reach the index is what this row reports
        return row("vector_db", "vector_db", False, f"LanceDB {uri}/{table} unreachable: {type(e).__name__}: {e}",
                   (time.perf_counter() - start) * 1000)
    ms = (time.perf_counter() - start) * 1000
    problems = []
    if rows == 0:
        problems.append("the index is empty")
    fresh = latest_data_commit is None or built_from == latest_data_commit
    if not fresh:
        problems.append(f"stale: built from data commit {built_from or '?'}, latest is {latest_data_commit}")
    detail = "; ".join(problems) or f"{rows} rows from data commit {built_from}"
    return row("vector_db", "vector_db", not problems, detail, ms, rows=rows, data_commit=built_from,
               latest_data_commit=latest_data_commit, fresh=fresh,
               **{k: v for k, v in query.items() if k in ("embed_ms", "search_ms")})


def mlflow_health(tracking_uri: str, timeout: float = 3.0) -> dict:
    """An sqlite store opens and has its tables; a server answers /health."""
    if tracking_uri.startswith("sqlite:"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))  # sqlite:////abs/db -> /abs/db
        start = time.perf_counter()
        if not path.exists():
            return row("mlflow", "mlflow", False, f"MLflow store {path} does not exist")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout) as db:
                runs = db.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.Error as e:
            return row("mlflow", "mlflow", False, f"MLflow store {path}: {e}")
        return row("mlflow", "mlflow", True, f"{path}: {runs} runs", (time.perf_counter() - start) * 1000, runs=runs)
    return http_health("mlflow", "mlflow", tracking_uri, timeout)


def lakehouse_health(root: str | Path, tables: list[str]) -> dict:
    """The lakehouse root exists and each named Delta table that exists reads its latest version."""
    from deltalake import DeltaTable

    start = time.perf_counter()
    if not Path(root).is_dir():
        return row("lakehouse", "lakehouse", False, f"lakehouse root {root} does not exist")
    versions = {}
    for t in tables:
        if (Path(root) / t / "_delta_log").is_dir():
            try:
                versions[t] = DeltaTable(str(Path(root) / t)).version()
            except Exception as e:  # noqa: BLE001 - a table that cannot be read is the finding
                return row("lakehouse", "lakehouse", False, f"Delta table {t}: {type(e).__name__}: {e}")
    return row("lakehouse", "lakehouse", True, f"{len(versions)} monitoring tables readable",
               (time.perf_counter() - start) * 1000, **versions)
