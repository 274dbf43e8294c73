"""Probing a live endpoint (real backend + gateway on 127.0.0.1) into the `endpoint_metrics` Delta table."""

from datetime import datetime, timezone

import dagster as dg
import pytest
from deltalake import DeltaTable

from llm_assets.artifacts import Endpoint
from llm_assets.deployment.processes import free_port
from llm_assets.monitoring.assets import LoadConfig, endpoint_metrics
from llm_assets.monitoring.load import RequestRecord, collect_endpoint_metrics, summarize
from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.spark import SparkResource
from tests.tiny_model import build_tiny_model

SUMMARY_KEYS = {"latency_p50_ms", "latency_p95_ms", "tokens_per_s", "error_rate", "requests", "model_version"}


def record(latency_ms, status=200, tokens=10):
    return RequestRecord(datetime.now(timezone.utc), latency_ms, status, 5, tokens if status == 200 else 0, "")


def test_summarize_hand_written_records():
    records = [record(10.0), record(20.0), record(30.0), record(40.0), record(500.0, status=503)]
    s = summarize(records, wall_s=2.0, model_version="7")
    assert set(s) == SUMMARY_KEYS
    assert s["latency_p50_ms"] == 25.0  # errors do not count towards latency
    assert s["latency_p95_ms"] == pytest.approx(38.5)
    assert s["tokens_per_s"] == 20.0
    assert s["error_rate"] == 0.2 and s["requests"] == 5 and s["model_version"] == "7"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A deployed tiny model; stopped after the module."""
    home = tmp_path_factory.mktemp("monitoring-home")
    model_dir = build_tiny_model(home / "model", train_steps=30)
    serving = ServingResource(run_dir=str(home / "run"), gateway_port=free_port(), startup_timeout=180)
    try:
        deployment = serving.deploy(str(model_dir), "tiny-gpt", "5")
        yield home, serving, deployment
    finally:
        serving.stop()


def test_collect_endpoint_metrics_writes_rows_readable_by_deltalake(live, spark):
    home, serving, deployment = live
    lakehouse = LakehouseResource(root=str(home / "lakehouse"))
    result = collect_endpoint_metrics(deployment.url, "tiny-gpt", "5", spark, lakehouse, requests=6,
                                      concurrency=3, max_tokens=8)
    s = result.summary
    assert s["requests"] == 6 and s["error_rate"] == 0.0 and s["model_version"] == "5"
    assert 0 < s["latency_p50_ms"] <= s["latency_p95_ms"] and s["tokens_per_s"] > 0
    assert result.gateway["gateway_requests_total"] >= 6
    assert result.gateway["gateway_generated_tokens_total"] >= sum(r.completion_tokens for r in result.records)

    rows = DeltaTable(str(home / "lakehouse" / "endpoint_metrics")).to_pyarrow_table().to_pylist()
    assert len(rows) == 6
    assert {"timestamp", "model_version", "latency_ms", "completion_tokens", "status"} <= set(rows[0])
    assert all(r["status"] == 200 and r["model_version"] == "5" and r["completion_tokens"] == 8 for r in rows)
    assert all(r["timestamp"].tzinfo is not None and r["latency_ms"] > 0 for r in rows)

    # a second probe appends a new Delta version
    again = collect_endpoint_metrics(deployment.url, "tiny-gpt", "5", spark, lakehouse, requests=2, concurrency=2,
                                     max_tokens=4)
    table = DeltaTable(str(home / "lakehouse" / "endpoint_metrics"))
    assert again.table_version == table.version() == result.table_version + 1
    assert table.to_pyarrow_table().num_rows == 8


def test_endpoint_metrics_asset_metadata_keys(live, spark):
    home, serving, deployment = live
    ep = Endpoint(url=deployment.url, model="tiny-gpt", model_version="5", mlflow_run_id="r", data_commit="c")
    out = endpoint_metrics(
        dg.build_asset_context(resources={"serving": serving, "spark": SparkResource(scratch_dir=str(home / "spark")),
                                          "lakehouse": LakehouseResource(root=str(home / "lakehouse-asset"))}),
        config=LoadConfig(requests=4, concurrency=2, max_tokens=4), endpoint=ep)
    assert SUMMARY_KEYS <= set(out.metadata)
    assert out.metadata["requests"].value == 4 and out.metadata["model_version"].value == "5"
    assert out.metadata["gateway_requests_total"].value >= 4
    assert out.value["error_rate"] == 0.0
