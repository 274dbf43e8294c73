"""Monitoring sensors on a real Dagster instance with recorded materializations: one case per situation.

The feedback chain's cases run the `retrain` and `build_feedback_dataset` jobs for real on stand-in
`trained_checkpoint` and `feedback_dataset` assets (the real TrainingConfig; metadata as the real assets
write it), so the sensor sees run configs and which job built the dataset, as on a daemon.
"""

import json
import uuid

import dagster as dg
import pytest

from llm_assets.training.assets import TrainingConfig
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
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=STANDIN_REPO))


class BuildConfig(dg.Config):
    examples: int = 3
    delta_version: int = 1


@dg.asset(name="trained_checkpoint")
def standin_trained_checkpoint(config: TrainingConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"steps": config.max_steps})


@dg.asset(name="feedback_dataset", deps=["trained_checkpoint"])
def standin_feedback_dataset(config: BuildConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"examples": config.examples, "delta_version": config.delta_version,
                                          "feedback": 7, "good": config.examples})


STANDIN_DEFS = dg.Definitions(assets=[standin_trained_checkpoint, standin_feedback_dataset], jobs=[
    dg.define_asset_job("retrain", selection=dg.AssetSelection.assets("trained_checkpoint").downstream()),
    dg.define_asset_job("build_feedback_dataset", selection=["feedback_dataset"])])
STANDIN_REPO = STANDIN_DEFS.get_repository_def()
TRAINED = {"max_steps": 6, "lr": 5e-4, "micro_batch_size": 4}


def run_job(instance, job, **ops):
    result = STANDIN_DEFS.resolve_job_def(job).execute_in_process(
        instance=instance, run_config={"ops": {k: {"config": v} for k, v in ops.items()}})
    assert result.success


def deployed(instance, stable="1", versions=("1", "2")):
    """exported_model materializations of `versions`, and an endpoint serving `stable` as the stable version."""
    for v in versions:
        record(instance, "exported_model", version=v, registered_name="llmops-demo",
               model_dir=dg.MetadataValue.path(f"/home/models/llmops-demo/v{v}"))
    record(instance, "endpoint", model="llmops-demo", model_version=versions[-1], stable_version=stable)


def latest_id(instance, asset):
    return instance.fetch_materializations(dg.AssetKey(asset), limit=1).records[0].storage_id


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


def test_feedback_chain_builds_then_fine_tunes_the_promoted_model_once(instance):
    clock = Clock()
    sensor = make_feedback_sensor(min_new_feedback=5, cooldown_s=600, clock=clock)
    run_job(instance, "retrain", trained_checkpoint=TRAINED, feedback_dataset={})  # trained v1 this way
    deployed(instance, stable="1")  # v2 is a canary: v1 is what users rated
    record(instance, "endpoint_metrics", feedback_total=7)
    first = evaluate(sensor, instance)
    (build,) = first.run_requests  # the retrain run's own (empty) dataset rebuild is consumed, not acted on
    assert build.job_name == "build_feedback_dataset" and build.run_key == "feedback-7"
    assert build.tags["llmops/sensor"] == "feedback_dataset_sensor"
    assert isinstance(evaluate(sensor, instance, first.cursor), dg.SkipReason)

    run_job(instance, "build_feedback_dataset", feedback_dataset={"examples": 3, "delta_version": 4})
    second = evaluate(sensor, instance, first.cursor)
    (tune,) = second.run_requests
    assert tune.job_name == "retrain" and tune.run_key == f"feedback-finetune-{latest_id(instance, 'feedback_dataset')}"
    assert tune.run_config["ops"]["trained_checkpoint"]["config"] == {
        **TRAINED, "init_from": "/home/models/llmops-demo/v1", "feedback_examples": True}
    assert set(tune.run_config["ops"]) <= set(STANDIN_REPO.get_job("retrain").graph.node_dict)
    assert tune.tags["llmops/feedback_dataset_version"] == "4" and tune.tags["llmops/feedback_examples"] == "3"
    assert tune.tags["llmops/reason"] == ("feedback_dataset v4: 3 good-feedback examples (of 7 feedback records); "
                                          "fine-tuning the promoted model v1 at /home/models/llmops-demo/v1")
    assert tune.tags["llmops/fine_tune_from"] == "llmops-demo v1"
    assert isinstance(evaluate(sensor, instance, second.cursor), dg.SkipReason)  # never twice


def test_feedback_chain_skips_empty_and_foreign_builds_and_cools_down(instance):
    clock = Clock()
    sensor = make_feedback_sensor(min_new_feedback=5, cooldown_s=600, clock=clock)
    deployed(instance, stable="2")
    run_job(instance, "build_feedback_dataset", feedback_dataset={"examples": 0, "delta_version": -1})
    empty = evaluate(sensor, instance)
    assert not empty.run_requests and "has no examples" in empty.skip_reason.skip_message
    run_job(instance, "retrain", trained_checkpoint=TRAINED, feedback_dataset={"examples": 3})
    foreign = evaluate(sensor, instance, empty.cursor)  # retrain rebuilt it: no new feedback in it
    assert not foreign.run_requests and "is not from a build_feedback_dataset run" in foreign.skip_reason.skip_message

    run_job(instance, "build_feedback_dataset", feedback_dataset={"examples": 3, "delta_version": 1})
    tuned = evaluate(sensor, instance, foreign.cursor)
    (tune,) = tuned.run_requests
    assert tune.run_config["ops"]["trained_checkpoint"]["config"]["init_from"] == "/home/models/llmops-demo/v2"
    run_job(instance, "build_feedback_dataset", feedback_dataset={"examples": 5, "delta_version": 2})
    clock.now += 60
    held = evaluate(sensor, instance, tuned.cursor)
    assert isinstance(held, dg.SkipReason) and "cooling down 540s" in held.skip_message
    instance.add_run(dg.DagsterRun(job_name="build_feedback_dataset", run_id=str(uuid.uuid4()),
                                   status=dg.DagsterRunStatus.STARTED))
    clock.now += 600
    building = evaluate(sensor, instance, tuned.cursor)  # a build in flight: wait for its newer dataset
    assert isinstance(building, dg.SkipReason) and "being built" in building.skip_message
    run_job(instance, "build_feedback_dataset", feedback_dataset={"examples": 6, "delta_version": 3})
    instance.delete_run(next(r.run_id for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED))
    (again,) = evaluate(sensor, instance, tuned.cursor).run_requests
    assert again.tags["llmops/feedback_dataset_version"] == "3" and again.tags["llmops/feedback_examples"] == "6"


def test_fine_tune_waits_for_a_build_it_requests_and_for_a_model(instance):
    sensor = make_feedback_sensor(min_new_feedback=5, cooldown_s=0, clock=Clock())
    run_job(instance, "build_feedback_dataset", feedback_dataset={"examples": 3, "delta_version": 1})
    no_model = evaluate(sensor, instance)
    assert "no exported_model materialization to fine-tune" in no_model.skip_message
    deployed(instance, stable="1", versions=("1",))
    record(instance, "endpoint_metrics", feedback_total=9)
    (build,) = evaluate(sensor, instance).run_requests  # the dataset is about to change: no fine-tune yet
    assert build.job_name == "build_feedback_dataset"


def test_retrain_after_a_fine_tune_continues_from_the_model_served_now(instance):
    run_job(instance, "retrain", trained_checkpoint={**TRAINED, "init_from": "/home/models/llmops-demo/v1"},
            feedback_dataset={})
    deployed(instance, stable="2")  # the fine-tuned model was promoted since
    record(instance, "drift_report", **DRIFT)
    sensor = make_retrain_sensor(cooldown_s=0)
    first = evaluate(sensor, instance)
    (run,) = first.run_requests
    assert run.run_config["ops"]["trained_checkpoint"]["config"] == {
        **TRAINED, "init_from": "/home/models/llmops-demo/v2", "feedback_examples": True}
    assert run.tags["llmops/fine_tune_from"] == "the promoted model v2"
    record(instance, "endpoint_rollback", promoted_version="1", rolled_back_version="2")  # v2 regressed live
    record(instance, "drift_report", **DRIFT)
    (run,) = evaluate(sensor, instance, first.cursor).run_requests
    assert run.run_config["ops"]["trained_checkpoint"]["config"]["init_from"] == "/home/models/llmops-demo/v1"
