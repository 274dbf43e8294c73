"""Rollout on real servers: a prompt applied at deployment, a new prompt version A/B tested, a canary model
version promoted on live traffic, and a worse canary rolled back (`transformers serve` + our gateway)."""

import dagster as dg
import pytest

from llm_assets.artifacts import Endpoint, ExportedModel, QuantizedModel
from llm_assets.deployment import processes, prompts
from llm_assets.deployment.assets import (CanaryConfig, EndpointConfig, PromptRegistryConfig, canary_analysis,
                                          endpoint, prompt_registry)
from llm_assets.deployment.rollout import read_jsonl
from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.tracking import TrackingResource
from tests.tiny_model import build_tiny_model

MODEL = "rollout-gpt"
LOOSE = {"min_requests": 4, "max_error_rate_increase": 0.5, "max_latency_p95_ratio": 100.0,
         "max_toxicity_increase": 1.0, "max_positive_feedback_drop": 1.0}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("rollout-home")


@pytest.fixture(scope="module")
def resources(home):
    serving = ServingResource(run_dir=str(home / "run"), gateway_port=0, startup_timeout=180, health_interval=0.5)
    yield {"serving": serving, "lakehouse": LakehouseResource(root=str(home / "lakehouse")),
           "tracking": TrackingResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                                        artifact_root=str(home / "mlruns"))}
    serving.stop()


def version(home, tracking, n: int) -> ExportedModel:
    model_dir = build_tiny_model(home / "models" / f"v{n}", train_steps=30, seed=n)
    run_id = tracking.start_run(f"rollout-{n}", {})
    assert tracking.register_model(MODEL, str(model_dir), run_id) == str(n)
    return ExportedModel(path=str(model_dir), registered_name=MODEL, version=str(n), mlflow_run_id=run_id,
                         data_commit="c")


def templates(home, text: str) -> PromptRegistryConfig:
    directory = home / "prompts"
    directory.mkdir(exist_ok=True)
    (directory / "assistant.yaml").write_text(f"name: assistant\ntemplate: {text}\n")
    return PromptRegistryConfig(templates_dir=str(directory))


def run(asset, resources, **inputs):
    return asset(dg.build_asset_context(resources=resources), **inputs)


def deploy(resources, model: ExportedModel, registry: dict, weight: float) -> Endpoint:
    quantized = QuantizedModel(path="", source=model, size_ratio=0.5, perplexity_delta=0.0)
    return run(endpoint, {k: resources[k] for k in ("serving", "tracking")}, config=EndpointConfig(canary_weight=weight),
               exported_model=model, quantized_model=quantized, prompt_registry=registry).value


def test_prompt_and_model_canaries_are_promoted_then_a_worse_canary_is_rolled_back(home, resources):
    serving, tracking = resources["serving"], resources["tracking"]
    first = run(prompt_registry, resources, config=templates(home, "Be brief.")).value
    v1, v2, v3 = (version(home, tracking, n) for n in (1, 2, 3))
    deploy(resources, v1, first, weight=0.5)
    prompt_a = prompts.version_of("Be brief.")
    assert serving.current().routes["prompts"]["assistant"]["versions"][prompt_a]["weight"] == 1.0
    assert tracking.promoted_version(MODEL) == "1"

    second = run(prompt_registry, resources, config=templates(home, "Be kind."))
    prompt_b = prompts.version_of("Be kind.")
    assert second.metadata["rollout"].value == f"A/B: {prompt_b} at 0.50 against {prompt_a}"
    assert {r["version"] for r in prompts.registered(resources["lakehouse"].root)} == {prompt_a, prompt_b}
    canary = deploy(resources, v2, second.value, weight=0.5)
    assert serving.current().weights == {"1": 0.5, "2": 0.5} and canary.model_version == "2"

    judged = run(canary_analysis, resources, config=CanaryConfig(probe_requests=24, **LOOSE), endpoint=canary,
                 exported_model=v2, prompt_registry=second.value)
    assert judged.metadata["model_decision"].value == "promote"
    assert judged.metadata["prompt_decision"].value == "promote"
    assert serving.current().weights == {"2": 1.0} and tracking.promoted_version(MODEL) == "2"
    assert list(serving.current().routes["prompts"]["assistant"]["versions"]) == [prompt_b]
    logged = read_jsonl(home / "run" / "logs" / "requests.jsonl")
    assert {"1", "2"} <= set(logged["model_version"]) and {prompt_a, prompt_b} <= set(logged["prompt_version"])
    assert {f"llmops-probe-{i}" for i in range(24)} <= set(logged["user"])  # sticky probes: a reproducible split
    assert not [name for name in processes.status(serving.run_dir) if name.startswith("backend-1-")]  # v1 stopped

    worse = deploy(resources, v3, second.value, weight=0.5)
    strict = {**LOOSE, "max_latency_p95_ratio": 0.01}  # any candidate is "slower" than this allows
    judged = run(canary_analysis, resources, config=CanaryConfig(probe_requests=16, **strict), endpoint=worse,
                 exported_model=v3, prompt_registry=second.value)
    assert judged.metadata["model_decision"].value == "rollback"
    assert "latency_p95_ms" in judged.metadata["model_analysis"].value
    logged = read_jsonl(home / "run" / "logs" / "requests.jsonl")
    assert {f"llmops-probe-{i}" for i in range(40)} <= set(logged["user"])  # the second round: new probe users
    assert serving.current().weights == {"2": 1.0} and tracking.promoted_version(MODEL) == "2"
