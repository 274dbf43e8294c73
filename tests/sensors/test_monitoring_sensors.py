"""Monitoring sensors on a real Dagster instance with recorded materializations: one case per situation."""

import json

import dagster as dg
import pytest

from sensors.monitoring import make_feedback_sensor, make_reindex_sensor, make_retrain_sensor

CALM_DRIFT = {"drifted": False, "drift_reasons": "-", "input_embedding_auc": 0.52, "output_embedding_auc": 0.5,
              "input_stats_drift_share": 0.0, "output_stats_drift_share": 0.0}
DRIFT = {**CALM_DRIFT, "drifted": True, "input_embedding_auc": 0.97,
         "drift_reasons": "input embedding drift: classifier AUC 0.970 > 0.75"}
CALM_QUALITY = {"degraded": False, "breaches": "-", "toxicity_rate": 0.0, "pii_leak_rate": 0.0,
                "refusal_rate": 0.1, "hallucination_rate": 0.2, "negative_feedback_rate": 0.1}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def record(instance, asset, **metadata):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, metadata=metadata))


def evaluate(sensor, instance, cursor=None):
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_retrain_quiet_without_measurements(instance):
    assert isinstance(evaluate(make_retrain_sensor(), instance), dg.SkipReason)


def test_retrain_consumes_healthy_measurements(instance):
    record(instance, "drift_report", **CALM_DRIFT)
    record(instance, "output_quality", **CALM_QUALITY)
    result = evaluate(make_retrain_sensor(), instance)
    assert not result.run_requests and set(json.loads(result.cursor)) == {"drift_report", "output_quality"}
    assert isinstance(evaluate(make_retrain_sensor(), instance, result.cursor), dg.SkipReason)


def test_retrain_on_drift_with_reason_and_numbers_once(instance):
    clock = Clock()
    sensor = make_retrain_sensor(cooldown_s=600, clock=clock)
    record(instance, "drift_report", **DRIFT)
    record(instance, "output_quality", **{**CALM_QUALITY, "degraded": True, "toxicity_rate": 0.2,
                                          "breaches": "toxicity_rate 0.200 > 0.05"})
    result = evaluate(sensor, instance)
    (run,) = result.run_requests
    assert run.tags["llmops/reason"] == ("drift_report: input embedding drift: classifier AUC 0.970 > 0.75; "
                                         "output_quality: toxicity_rate 0.200 > 0.05")
    assert run.tags["llmops/input_embedding_auc"] == "0.9700" and run.tags["llmops/toxicity_rate"] == "0.2000"
    assert run.run_key.startswith("retrain-drift_report")
    assert isinstance(evaluate(sensor, instance, result.cursor), dg.SkipReason)  # same events: never twice


def test_retrain_cool_down_holds_a_flapping_metric(instance):
    clock = Clock()
    sensor = make_retrain_sensor(cooldown_s=600, clock=clock)
    record(instance, "drift_report", **DRIFT)
    cursor = evaluate(sensor, instance).cursor
    record(instance, "drift_report", **DRIFT)  # drifts again a minute later
    clock.now += 60
    held = evaluate(sensor, instance, cursor)
    assert isinstance(held, dg.SkipReason) and "cooling down 540s" in held.skip_message
    clock.now += 600  # after the cool-down the newest event, still unconsumed, triggers one run
    (run,) = evaluate(sensor, instance, cursor).run_requests
    assert run.run_key == f"retrain-drift_report{instance.fetch_materializations(dg.AssetKey('drift_report'), limit=1).records[0].storage_id}"


def test_retrain_sensor_that_errors_keeps_its_cursor(instance):
    sensor = make_retrain_sensor(cooldown_s=0)
    record(instance, "drift_report", **CALM_DRIFT)
    cursor = evaluate(sensor, instance).cursor
    record(instance, "drift_report", input_embedding_auc=0.9)  # written by something else: no verdict
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    with pytest.raises(ValueError, match=r"drift_report materialization \(event \d+\) lacks metadata"):
        sensor(context)
    assert context.cursor == cursor
    record(instance, "drift_report", **DRIFT)  # the next good measurement is still acted on
    (run,) = evaluate(sensor, instance, cursor).run_requests
    assert "input embedding drift" in run.tags["llmops/reason"]


def test_feedback_sensor_threshold_once_and_cool_down(instance):
    clock = Clock()
    sensor = make_feedback_sensor(min_new_feedback=5, cooldown_s=600, clock=clock)
    assert isinstance(evaluate(sensor, instance), dg.SkipReason)
    record(instance, "endpoint_metrics", feedback_total=3)
    assert "3 new feedback records (need 5)" in evaluate(sensor, instance).skip_message
    record(instance, "endpoint_metrics", feedback_total=7)
    result = evaluate(sensor, instance)
    (run,) = result.run_requests
    assert run.run_key == "feedback-7" and run.tags["llmops/feedback_new"] == "7"
    assert isinstance(evaluate(sensor, instance, result.cursor), dg.SkipReason)
    record(instance, "endpoint_metrics", feedback_total=20)
    assert "cooling down" in evaluate(sensor, instance, result.cursor).skip_message
    clock.now += 601
    (run,) = evaluate(sensor, instance, result.cursor).run_requests
    assert run.tags["llmops/feedback_new"] == "13"


def test_reindex_sensor_on_an_unhealthy_vector_db(instance):
    sensor = make_reindex_sensor(cooldown_s=0)
    record(instance, "infra_health", vector_db_healthy=True, vector_db=dg.MetadataValue.json({"rows": 4}),
           vector_db_detail="4 rows from data commit a")
    healthy = evaluate(sensor, instance)
    assert not healthy.run_requests and json.loads(healthy.cursor)["infra_health"]
    record(instance, "infra_health", vector_db_healthy=False,
           vector_db=dg.MetadataValue.json({"rows": 4, "data_commit": "a", "latest_data_commit": "b"}),
           vector_db_detail="stale: built from data commit a, latest is b")
    result = evaluate(sensor, instance, healthy.cursor)
    (run,) = result.run_requests
    assert run.tags["llmops/reason"] == "vector DB unhealthy: stale: built from data commit a, latest is b"
    assert run.tags["llmops/latest_data_commit"] == "b"
    assert isinstance(evaluate(sensor, instance, result.cursor), dg.SkipReason)
