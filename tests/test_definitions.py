"""The single Definitions object: it loads, validates, and the endpoint descends from the raw data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from llm_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]

CHAIN = ["raw_documents", "cleaned_corpus", "deduped_corpus", "curated_corpus", "tokenizer",
         "token_shards", "model_catalog", "base_model", "trained_checkpoint", "exported_model",
         "eval_report", "quantized_model", "endpoint", "endpoint_metrics"]


def _graph():
    return defs.resolve_asset_graph()


def test_every_stage_is_an_asset():
    keys = {key.to_user_string() for key in _graph().get_all_asset_keys()}
    assert set(CHAIN) <= keys, set(CHAIN) - keys


def test_endpoint_lineage_reaches_raw_documents():
    graph = _graph()
    seen, frontier = set(), [dg.AssetKey("endpoint")]
    while frontier:
        for parent in graph.get(frontier.pop()).parent_keys:
            if parent not in seen:
                seen.add(parent)
                frontier.append(parent)
    names = {k.to_user_string() for k in seen}
    assert set(CHAIN[:CHAIN.index("endpoint")]) - {"model_catalog", "base_model"} <= names


def test_quality_gates_are_blocking_checks():
    graph = _graph()
    blocking = {}
    for check_key in graph.asset_check_keys:
        blocking[(check_key.asset_key.to_user_string(), check_key.name)] = graph.get_check_spec(check_key).blocking
    assert blocking.get(("eval_report", "eval_gate")) is True
    curated = [b for (asset, _), b in blocking.items() if asset == "curated_corpus"]
    assert curated and all(curated), blocking


def test_jobs_schedules_and_sensors_are_defined():
    for job in ["lifecycle", "curation", "retrain", "evaluation", "redeploy", "canary", "rollback"]:
        assert defs.resolve_job_def(job)
    assert defs.resolve_schedule_def("continuous_evaluation")
    for sensor in ["live_regression_sensor", "endpoint_health_sensor", "raw_source_sensor"]:
        assert defs.resolve_sensor_def(sensor)


def test_dagster_definitions_validate_passes(tmp_path):
    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "LLMOPS_HOME": str(tmp_path / "home")}
    result = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
