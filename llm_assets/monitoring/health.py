"""Health of the components a live model depends on, one row per component.

Every check returns a row (component, kind, healthy, detail, latency_ms, numbers) and never raises for
the component being down: an unreachable vector DB is a red row, not a crash.

The vector DB's recall is measured on a fixed probe set: (query, expected passage) pairs drawn once from
the index by `rag.make_questions` (seeded hash of the passage id; the query is a passage sentence with one
word masked), stored as JSON with the data commit they came from, and reused unchanged on later runs, so
recall over time compares like with like. A probe passage gone from the index is a miss.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timezone
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


def probe_set(path: str | Path, table, size: int = 50, seed: int = 0, rebuild: bool = False) -> dict:
    """The fixed recall probe set stored at `path`: made from `table`'s passages (with the data commit in its
    schema metadata) when the file does not exist or `rebuild` is set, else read back unchanged."""
    from llm_assets.evaluation import rag

    path = Path(path)
    if path.exists() and not rebuild:
        try:
            probes = json.loads(path.read_text())
            if not probes["probes"]:
                raise ValueError("no probes")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"probe set {path} is unreadable ({type(e).__name__}: {e}); "
                             "rebuild it (rebuild_probe_set)") from e
        return probes
    questions = rag.make_questions(rag.read_passages(table), size, seed)
    if not questions:
        raise ValueError(f"no passage in the index has a {rag.QUESTION_WORDS[0]}-{rag.QUESTION_WORDS[1]}-word "
                         "sentence to make a recall probe from")
    probes = {"data_commit": (table.schema.metadata or {}).get(b"data_commit", b"").decode(),
              "made_at": datetime.now(timezone.utc).isoformat(), "seed": seed,
              "probes": [{"query": q.question, "passage_id": q.passage_id, "passage_hash": q.passage_hash}
                         for q in questions]}
    _write_json(path, probes)
    return probes


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def fixed_probe_recall(path: str | Path, table, size: int = 50, k: int = 5, rebuild: bool = False) -> dict:
    """`probe_recall` on the probe set stored at `path`, with `baseline_recall`: the recall@k it had the first
    time it was measured (stored in the probe file then), the yardstick for a later drop."""
    path = Path(path)
    probes = probe_set(path, table, size, rebuild=rebuild)
    measured = probe_recall(table, probes, k)
    baselines = probes.setdefault("baseline_recall", {})
    if str(k) not in baselines:
        baselines[str(k)] = measured["recall"]
        _write_json(path, probes)
    return {**measured, "baseline_recall": baselines[str(k)]}


def probe_recall(table, probes: dict, k: int = 5) -> dict:
    """recall@1, recall@k and MRR@k of the probe set searched in `table`. A hit is the expected passage or one
    with its exact text (a duplicate document); a probe whose passage id is gone from the index is a miss."""
    from llm_assets.evaluation import rag

    items = probes["probes"]
    indexed = set(table.to_arrow().column("id").to_pylist())
    hits = rag.search(table, rag.embed([p["query"] for p in items]), k)
    ranks = [next((i + 1 for i, h in enumerate(hit) if h["id"] == p["passage_id"]
                   or h["text_hash"] == p["passage_hash"]), None) if p["passage_id"] in indexed else None
             for p, hit in zip(items, hits)]
    ks = sorted({1, k})
    metrics = rag.retrieval_metrics(ranks, ks, len(indexed))
    return {"recall_k": k, "recall": metrics[f"recall_at_{k}"]["value"],
            **{f"recall_at_{j}": metrics[f"recall_at_{j}"]["value"] for j in ks}, "mrr": metrics["mrr"]["value"],
            "probes": len(items), "probes_missing": sum(p["passage_id"] not in indexed for p in items),
            "probe_set_commit": probes.get("data_commit", "")}


def vector_db_health(uri: str | Path, table: str, latest_data_commit: str | None,
                     probe: Callable[[object], dict] | None = None,
                     recall: Callable[[object], dict] | None = None, min_recall: float = 0.0,
                     max_recall_drop: float | None = None) -> dict:
    """The LanceDB index: opens, has rows, was built from the latest data commit; `probe(table)` (e.g.
    `rag.probe_latency`) measures a query; `recall(table)` (e.g. `probe_recall` on the fixed probe set) gives
    {"recall", "recall_k", ...}, and a recall below `min_recall`, or more than `max_recall_drop` below its
    `baseline_recall` (see `fixed_probe_recall`), or a probe that fails, is unhealthy."""
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
    measured = {}
    if recall and rows:
        try:
            measured = recall(t)
        except Exception as e:  # noqa: BLE001 - a probe set that cannot be made or read is a finding too
            problems.append(f"recall probe failed: {type(e).__name__}: {e}")
        else:
            if measured["recall"] < min_recall:
                problems.append(f"recall@{measured['recall_k']} {measured['recall']:.3f} on {measured['probes']} "
                                f"fixed probes is below {min_recall} ({measured['probes_missing']} probe "
                                "passages gone from the index)")
            baseline = measured.get("baseline_recall")
            if max_recall_drop is not None and baseline is not None and measured["recall"] < baseline - max_recall_drop:
                problems.append(f"recall@{measured['recall_k']} {measured['recall']:.3f} on {measured['probes']} "
                                f"fixed probes fell more than {max_recall_drop} below its baseline {baseline:.3f} "
                                f"({measured['probes_missing']} probe passages gone from the index)")
    detail = "; ".join(problems) or f"{rows} rows from data commit {built_from}" + (
        f", recall@{measured['recall_k']} {measured['recall']:.3f}" if measured else "")
    return row("vector_db", "vector_db", not problems, detail, ms, rows=rows, data_commit=built_from,
               latest_data_commit=latest_data_commit, fresh=fresh,
               **{k: v for k, v in query.items() if k in ("embed_ms", "search_ms")},
               **measured, **({"min_recall": min_recall, "max_recall_drop": max_recall_drop} if recall else {}))


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
