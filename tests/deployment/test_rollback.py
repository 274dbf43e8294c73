"""Rollback after a promotion: the real gateway, route table and processes with stand-in model servers
(tests/deployment/standin_backend.py, switched to failing answers at run time), the request log ingested
by the real endpoint_metrics (Spark, Delta), and MLflow's model registry on its sqlite store."""

import json
import shutil
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest

from llm_assets.artifacts import ExportedModel, QuantizedModel
from llm_assets.deployment import processes
from llm_assets.deployment.assets import EndpointConfig, RollbackConfig, endpoint, endpoint_rollback
from llm_assets.monitoring import load
from llm_assets.monitoring.assets import endpoint_metrics
from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.settings import SettingsResource
from resources.tracking import TrackingResource
from tests.tiny_model import build_tiny_model

MODEL = "rollback-gpt"
NO_PROMPT = {"applied": "", "prompts": {}}


class StandinServing(ServingResource):
    """Serving with stand-in model servers (0.05 s per answer, replies name their model directory)."""

    def backend_command(self, model_dir: str, port) -> list[str]:
        return [sys.executable, "-m", "tests.deployment.standin_backend", "--port", str(port),
                "--name", str(model_dir), "--delay", "0.05"]


@pytest.fixture
def serving(home):
    serving = StandinServing(run_dir=str(home / "run"), gateway_port=0, health_interval=0.5, startup_timeout=60)
    yield serving
    serving.stop()


@pytest.fixture
def tracking(home):
    return TrackingResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=str(home / "mlruns"))


@pytest.fixture
def resources(llmops_resources, serving, tracking):
    return {**llmops_resources, "serving": serving, "tracking": tracking}


def register(home, tracking: TrackingResource, n: int) -> ExportedModel:
    model_dir = build_tiny_model(home / "models" / f"v{n}", train_steps=0, seed=n)  # the gateway reads its tokenizer
    run_id = tracking.start_run(f"rollback-{n}", {})
    assert tracking.register_model(MODEL, str(model_dir), run_id) == str(n)
    return ExportedModel(path=str(model_dir), registered_name=MODEL, version=str(n), mlflow_run_id=run_id,
                         data_commit="c")


def deploy(resources, model: ExportedModel, weight: float = 1.0) -> None:
    quantized = QuantizedModel(path="", source=model, size_ratio=0.5, perplexity_delta=0.0)
    endpoint(dg.build_asset_context(resources={k: resources[k] for k in ("serving", "tracking")}),
             config=EndpointConfig(canary_weight=weight), exported_model=model, quantized_model=quantized,
             prompt_registry=NO_PROMPT)


def promote(resources, version: str) -> None:
    """What canary_analysis does on a promote verdict."""
    resources["serving"].promote(version)
    resources["tracking"].promote(MODEL, version)


def traffic(serving: ServingResource, n: int) -> list[int]:
    records, _ = load.run_load(serving.current().url, MODEL, n, concurrency=2, max_tokens=4)
    return [r.status for r in records]


def measure(instance, resources) -> None:
    result = dg.materialize([endpoint_metrics], instance=instance, resources=resources)
    assert result.success


def rollback(resources, model: ExportedModel, **config) -> dg.Output:
    return endpoint_rollback(dg.build_asset_context(resources={
        k: resources[k] for k in ("lakehouse", "serving", "settings", "tracking")}),
        config=RollbackConfig(**config), exported_model=model)


def failing(serving: ServingResource, version: str) -> None:
    for url in serving.current().versions[version]["replicas"]:
        httpx.post(f"{url}/_mode", json={"completions": "error"}, timeout=10).raise_for_status()


def test_a_regressed_promoted_version_is_rolled_back_on_fake_model_servers(home, resources):
    serving, tracking = resources["serving"], resources["tracking"]
    v1, v2 = register(home, tracking, 1), register(home, tracking, 2)
    with dg.instance_for_test() as instance:
        deploy(resources, v1)
        assert set(traffic(serving, 24)) == {200}
        measure(instance, resources)
        deploy(resources, v2, weight=0.5)  # a canary, then promoted
        promote(resources, "2")
        assert (tracking.promoted_version(MODEL), tracking.previous_version(MODEL)) == ("2", "1")
        failing(serving, "2")
        assert 200 not in traffic(serving, 24)
        measure(instance, resources)

        result = rollback(resources, v2)

    meta = {k: v.value for k, v in result.metadata.items()}
    assert meta["decision"] == "rollback" and meta["rolled_back_version"] == "2"
    assert "error_rate" in meta["reason"] and "| error_rate |" in meta["analysis"]
    assert meta["arms"]["promoted"]["error_rate"] > 0.9 and meta["arms"]["previous"]["error_rate"] == 0.0
    assert serving.current().weights == {"1": 1.0} and meta["weights"] == {"1": 1.0}
    assert (tracking.promoted_version(MODEL), tracking.previous_version(MODEL)) == ("1", "2")
    assert "error_rate" in tracking.rolled_back_reason(MODEL, "2")
    assert tracking.rolled_back_reason(MODEL, "1") is None
    # v1 serves again from its registered artifact, and v2's servers are stopped
    restored = serving.current().versions["1"]["model_dir"]
    assert restored == str(Path(tracking.model_dir(MODEL, "1", home / "cache")).resolve()) and "mlruns" in restored
    reply = serving.chat(serving.current().url, MODEL, "still there?")
    assert reply["model_version"] == "1" and reply["choices"][0]["message"]["content"].startswith(f"from {restored}")
    assert not [name for name in processes.status(serving.run_dir) if name.startswith("backend-2-")]
    # never back to a version that was rolled back
    again = rollback(resources, v2)
    assert again.metadata["decision"].value == "no action"
    assert "previous version 2 was itself rolled back" in again.metadata["reason"].value


def test_a_healthy_promoted_version_stays_on_fake_model_servers(home, resources):
    serving, tracking = resources["serving"], resources["tracking"]
    v1, v2 = register(home, tracking, 1), register(home, tracking, 2)
    loose_latency = {"max_latency_p95_ratio": 3.0}  # both answer in ~0.05 s; only scheduling noise differs
    with dg.instance_for_test() as instance:
        deploy(resources, v1)
        traffic(serving, 24)
        measure(instance, resources)
        deploy(resources, v2, weight=0.5)
        promote(resources, "2")
        traffic(serving, 4)
        measure(instance, resources)
        early = rollback(resources, v2, **loose_latency)
        assert early.metadata["decision"].value == "wait"
        assert "20 needed" in early.metadata["reason"].value

        assert set(traffic(serving, 24)) == {200}
        measure(instance, resources)
        result = rollback(resources, v2, **loose_latency)

    assert result.metadata["decision"].value == "keep", result.metadata["reason"].value
    assert result.metadata["rolled_back_version"].value == "none"
    assert serving.current().weights == {"2": 1.0} and tracking.promoted_version(MODEL) == "2"
    assert tracking.rolled_back_reason(MODEL, "2") is None


def test_no_previous_promoted_version_means_no_action(home, serving, tracking):
    v1 = register(home, tracking, 1)
    resources = {"serving": serving, "tracking": tracking, "settings": SettingsResource(home=str(home)),
                 "lakehouse": LakehouseResource(root=str(home / "lakehouse"))}
    deploy(resources, v1)
    result = endpoint_rollback(dg.build_asset_context(resources=resources), config=RollbackConfig(), exported_model=v1)
    assert result.metadata["decision"].value == "no action"
    assert result.metadata["reason"].value == f"no previous promoted version of {MODEL}: version 1 is the first"
    assert serving.current().weights == {"1": 1.0} and tracking.promoted_version(MODEL) == "1"


def test_promote_remembers_the_replaced_version_and_a_remote_source_is_downloaded_once(home, tracking):
    v1 = register(home, tracking, 1)
    tracking.promote(MODEL, "1")
    tracking.promote(MODEL, "1")
    assert tracking.previous_version(MODEL) is None
    # a version whose source is not a local path (as with an s3:// artifact root): fetched through MLflow
    client = tracking.client()
    remote = str(client.create_model_version(MODEL, f"runs:/{v1.mlflow_run_id}/model", run_id=v1.mlflow_run_id).version)
    tracking.promote(MODEL, remote)
    assert (tracking.promoted_version(MODEL), tracking.previous_version(MODEL)) == (remote, "1")
    cache = home / "cache"
    local = tracking.model_dir(MODEL, remote, cache)
    assert local == str(cache / MODEL / f"v{remote}")
    assert json.loads((cache / MODEL / f"v{remote}" / "config.json").read_text())["model_type"] == "gpt2"
    assert [p.name for p in (cache / MODEL).iterdir()] == [f"v{remote}"]  # no scratch left behind
    shutil.rmtree(tracking.model_dir(MODEL, "1", cache))  # v1's local source: the artifact itself
    assert tracking.model_dir(MODEL, remote, cache) == local  # served from the cache, not fetched again
