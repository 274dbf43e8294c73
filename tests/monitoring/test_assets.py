"""The monitoring assets materialized on a real Dagster instance, Spark and Delta, from request logs written
in the gateway contract's format, and the monitoring sensors acting on what they recorded."""

import json
import math

import dagster as dg
import pytest
from deltalake import DeltaTable
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from llm_assets.deployment.processes import free_port
from llm_assets.monitoring import performance
from llm_assets.monitoring.assets import (
    drift_report, endpoint_cost, endpoint_metrics, feedback_dataset, infra_health, monitoring_report, output_quality,
)
from sensors.monitoring import make_feedback_sensor, make_reindex_sensor, make_retrain_sensor
from tests.monitoring.logs import append_jsonl, feedback_row, request_row
from tests.monitoring.test_drift import FOOD, TECH


@pytest.fixture
def gateway_metrics():
    registry = CollectorRegistry()
    Gauge("gateway_outstanding_requests", "", ["model", "version", "replica"], registry=registry).labels(
        "llmops-gpt", "3", "r1").set(2)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def metrics_run(instance, resources, url):
    return dg.materialize([endpoint_metrics], instance=instance, resources=resources, run_config={
        "ops": {"endpoint_metrics": {"config": {"gateway_url": url}}}})


def check(result, name):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def test_endpoint_metrics_reads_only_new_rows_and_alerts_when_blind(home, llmops_resources, gateway_metrics):
    logs = home / "run" / "logs"
    append_jsonl(logs / "requests.jsonl", [request_row(i, latency_ms=100.0 + i) for i in range(6)]
                 + [request_row(6, version="4", status=503)])
    append_jsonl(logs / "feedback.jsonl", [feedback_row("req-0", thumbs="up")])
    with open(logs / "requests.jsonl", "a") as f:
        f.write("this is not json\n")
    with dg.instance_for_test() as instance:
        first = metrics_run(instance, llmops_resources, gateway_metrics)
        meta = first.asset_materializations_for_node("endpoint_metrics")[0].metadata
        assert meta["requests"].value == 7 and meta["error_rate"].value == pytest.approx(1 / 7)
        assert meta["latency_p50_ms"].value == pytest.approx(102.5) and meta["queue_depth"].value == 2.0
        assert meta["quarantined_lines"].value == 1 and meta["feedback_total"].value == 1
        # no replica pid files under this home: no GPU numbers, and the gpu field says why (NVML's status)
        assert meta["gpu"].value == performance.gpu_snapshot()["status"] and math.isnan(meta["gpu_memory_mb"].value)
        assert check(first, "metrics_arriving").passed
        observed = instance.fetch_observations(dg.AssetKey("endpoint_metrics"), limit=10).records
        assert {r.asset_observation.metadata["model_version"].value for r in observed} == {"3", "4"}

        append_jsonl(logs / "requests.jsonl", [request_row(i) for i in range(7, 10)] + [request_row(0)])  # a repeat
        second = metrics_run(instance, llmops_resources, gateway_metrics)
        assert second.asset_materializations_for_node("endpoint_metrics")[0].metadata["requests"].value == 3
        stored = DeltaTable(str(home / "lakehouse" / "served_requests")).to_pyarrow_table()
        assert stored.num_rows == 10 and len(set(stored.column("request_id").to_pylist())) == 10
        windows = DeltaTable(str(home / "lakehouse" / "endpoint_metric_windows")).to_pyarrow_table().to_pylist()
        assert {(w["model_version"], w["requests"]) for w in windows} >= {("3", 6), ("4", 1), ("all", 7), ("3", 3)}
        assert all(w[k] is None or math.isnan(w[k]) for w in windows for k in ("gpu_util_percent", "gpu_memory_mb"))
        quarantined = DeltaTable(str(home / "lakehouse" / "served_quarantine")).to_pyarrow_table().to_pylist()
        assert quarantined[0]["reason"].startswith("invalid JSON")

        # no new rows and the gateway is gone: an ERROR alert, never a healthy reading
        blind = metrics_run(instance, llmops_resources, f"http://127.0.0.1:{free_port()}")
        evaluation = check(blind, "metrics_arriving")
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert "cannot be scraped" in evaluation.metadata["why"].value


def test_downstream_assets_and_sensors_on_their_materializations(home, llmops_resources, gateway_metrics):
    logs = home / "run" / "logs"
    reference = [request_row(i, prompt=f"{TECH[i % 6]} ({i})", response=f"Technical answer {i}.") for i in range(12)]
    shifted = [request_row(100 + i, prompt=f"{FOOD[i % 6]} ({i})", response=f"Respuesta de cocina {i}.",
                           context=["Technical answer about cooking."]) for i in range(12)]
    append_jsonl(logs / "requests.jsonl", reference + shifted)
    append_jsonl(logs / "feedback.jsonl", [feedback_row("req-1", rating=5), feedback_row("req-2", thumbs="up"),
                                           feedback_row("req-3", thumbs="down")])
    retrain, feedback, reindex = (make_retrain_sensor(cooldown_s=0), make_feedback_sensor(min_new_feedback=3),
                                  make_reindex_sensor(cooldown_s=0))
    with dg.instance_for_test() as instance:
        metrics_run(instance, llmops_resources, gateway_metrics)
        result = dg.materialize(
            [endpoint_cost, output_quality, drift_report, feedback_dataset, infra_health, monitoring_report],
            instance=instance, resources=llmops_resources, selection=None, run_config={"ops": {
                "endpoint_cost": {"config": {"daily_budget_usd": 0.0001}},
                "output_quality": {"config": {"sample_fraction": 1.0}},
                "drift_report": {"config": {"window": 12, "min_rows": 8}},
                "infra_health": {"config": {"gateway_url": gateway_metrics, "probe_vector_query": False}}}})
        meta = {n: result.asset_materializations_for_node(n)[0].metadata for n in
                ("endpoint_cost", "output_quality", "drift_report", "feedback_dataset", "monitoring_report")}
        assert not check(result, "within_daily_budget").passed
        assert meta["endpoint_cost"]["daily_total_usd"].value > 0
        assert meta["output_quality"]["sampled"].value == 24 and meta["output_quality"]["with_context"].value == 12
        assert meta["drift_report"]["drifted"].value and meta["drift_report"]["input_embedding_auc"].value > 0.75
        assert meta["feedback_dataset"]["examples"].value == 2
        assert meta["monitoring_report"]["plots"].value >= 4 and "prompt_ab_plot" in meta["monitoring_report"]
        (ab,) = meta["monitoring_report"]["prompt_ab_numbers"].value  # every request used prompt p1
        assert (ab["prompt_version"], ab["requests"], ab["feedback"], ab["scored"]) == ("p1", 24, 3, 24)
        assert ab["positive_feedback_rate"] == pytest.approx(2 / 3) and ab["error_rate"] == 0.0
        assert "| assistant | p1 | 24 | 0.0% |" in meta["monitoring_report"]["prompt_ab"].value
        queue = DeltaTable(str(home / "lakehouse" / "review_queue")).to_pyarrow_table()
        assert queue.num_rows == 24
        # no LanceDB index under this home: RAG health is red, and nothing crashed
        assert not check(result, "vector_db_healthy").passed and check(result, "lakehouse_healthy").passed
        health_meta = result.asset_materializations_for_node("infra_health")[0].metadata
        assert "unreachable" in health_meta["vector_db_detail"].value and "vector_db_recall" not in health_meta

        (run,) = retrain(dg.build_sensor_context(instance=instance)).run_requests
        assert "drift_report: input embedding drift" in run.tags["llmops/reason"]
        assert float(run.tags["llmops/input_embedding_auc"]) > 0.75
        (run,) = feedback(dg.build_sensor_context(instance=instance)).run_requests
        assert run.tags["llmops/feedback_new"] == "3"
        (run,) = reindex(dg.build_sensor_context(instance=instance)).run_requests
        assert "vector DB unhealthy" in run.tags["llmops/reason"]
        assert json.loads(run.tags.get("llmops/rows", "0")) == 0 or "llmops/rows" not in run.tags
