"""Rollout sensors, one case per situation, on a real DagsterInstance with real materializations."""

import json

import dagster as dg
import pytest

from llm_assets.deployment import prompts
from resources.serving import ServingResource
from sensors.rollout import data_commit_sensor, live_arms, make_canary_sensor, prompt_change_sensor

ROUTES = {"models": {"m": {"prompt": "assistant", "versions": {
    "1": {"weight": 1.0, "replicas": ["http://127.0.0.1:1"]}}}},
    "prompts": {"assistant": {"versions": {"a": {"template": "A", "weight": 1.0}}}}}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def materialize(instance, asset: str, **metadata):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, metadata=metadata))


def serving_with(tmp_path, routes) -> ServingResource:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    if routes is not None:
        (run / "deployment.json").write_text(json.dumps({"url": "http://127.0.0.1:1", "model_name": "m",
                                                         "gateway_pid": 1}))
        (run / "routes.json").write_text(json.dumps(routes))
    return ServingResource(run_dir=str(run))


def canary(weights=None, prompt_versions=None):
    routes = json.loads(json.dumps(ROUTES))
    for v, w in (weights or {}).items():
        routes["models"]["m"]["versions"][v] = {"weight": w, "replicas": ["http://127.0.0.1:2"]}
    for v in prompt_versions or []:
        routes["prompts"]["assistant"]["versions"][v] = {"template": v, "weight": 0.5}
    return routes


def test_live_arms_name_model_and_prompt_tests():
    assert live_arms(ROUTES) == []
    assert live_arms(canary(weights={"2": 0.1}, prompt_versions=["b"])) == [
        "m model versions 1, 2", "prompt assistant versions a, b"]


def test_canary_sensor_skips_without_a_deployment_or_a_test(instance, tmp_path):
    sensor = make_canary_sensor(interval_s=300)
    for routes in (None, ROUTES):
        ctx = dg.build_sensor_context(instance=instance, resources={"serving": serving_with(tmp_path, routes)})
        assert isinstance(sensor(ctx), dg.SkipReason)


def test_canary_sensor_requests_an_analysis_then_waits_its_interval(instance, tmp_path):
    sensor = make_canary_sensor(interval_s=300)
    serving = serving_with(tmp_path, canary(weights={"2": 0.1}))
    result = sensor(dg.build_sensor_context(instance=instance, resources={"serving": serving}))
    (request,) = result.run_requests
    assert request.tags["llmops/reason"] == "live: m model versions 1, 2"
    again = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"serving": serving}))
    assert isinstance(again, dg.SkipReason) and "next analysis in" in again.skip_message


def test_prompt_change_sensor_registers_then_only_on_a_change(instance):
    first = prompt_change_sensor(dg.build_sensor_context(instance=instance))
    (request,) = first.run_requests
    assert request.tags["llmops/reason"] == "prompt templates never registered"
    assert isinstance(prompt_change_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor)),
                      dg.SkipReason)  # requested already, not materialized yet
    (shipped,) = prompts.load_templates()
    materialize(instance, "prompt_registry", applied="assistant", applied_version=shipped.version)
    assert isinstance(prompt_change_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    materialize(instance, "prompt_registry", applied="assistant", applied_version="0ld0ld0ld0ld")
    # the template file was edited after the rollout of 0ld0ld0ld0ld was requested and registered
    changed = prompt_change_sensor(dg.build_sensor_context(instance=instance, cursor="assistant@0ld0ld0ld0ld"))
    assert changed.run_requests and f"0ld0ld0ld0ld -> {shipped.version}" in changed.run_requests[0].tags["llmops/reason"]


def test_data_commit_sensor_refreshes_once_per_new_commit(instance):
    assert isinstance(data_commit_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    materialize(instance, "curated_corpus", data_commit="c1")
    materialize(instance, "token_shards", data_commit="c1")
    assert "already built" in data_commit_sensor(dg.build_sensor_context(instance=instance)).skip_message
    materialize(instance, "curated_corpus", data_commit="c2")
    result = data_commit_sensor(dg.build_sensor_context(instance=instance))
    (request,) = result.run_requests
    assert request.run_key == "data-c2" and request.tags["llmops/data_commit"] == "c2"
    again = data_commit_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert "already requested" in again.skip_message


def test_canary_sensor_waits_for_an_analysis_in_flight(instance, tmp_path):
    @dg.job(name="canary")
    def earlier_canary():
        dg.op(name="noop")(lambda: None)()

    serving = serving_with(tmp_path, canary(weights={"2": 0.1}))
    run = instance.create_run_for_job(earlier_canary)  # not started yet: in flight
    skipped = make_canary_sensor(interval_s=0)(dg.build_sensor_context(instance=instance, resources={"serving": serving}))
    assert isinstance(skipped, dg.SkipReason) and f"canary run {run.run_id} still in flight" in skipped.skip_message
    instance.report_run_failed(run)
    result = make_canary_sensor(interval_s=0)(dg.build_sensor_context(instance=instance, resources={"serving": serving}))
    assert len(result.run_requests) == 1
