"""The `endpoint` asset on a real tiny model: `transformers serve` + our gateway as detached processes on 127.0.0.1.

The tests in this module share one deployment and run in order; the last one stops it with
`python -m llm_assets.deployment.processes stop-all`, as `make down` does.
"""

import json
import os
import subprocess
import sys

import dagster as dg
import httpx
import pytest

from llm_assets.artifacts import ExportedModel, QuantizedModel
from llm_assets.deployment import processes
from llm_assets.deployment.assets import EndpointConfig, endpoint
from llm_assets.monitoring.load import scrape_gateway_metrics
from resources.serving import ServingResource
from resources.tracking import TrackingResource
from tests.tiny_model import build_tiny_model

MODEL = "tiny-gpt"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("serving-home")


@pytest.fixture(scope="module")
def serving(home):
    return ServingResource(run_dir=str(home / "run"), gateway_port=processes.free_port(), startup_timeout=180)


@pytest.fixture(scope="module")
def tracking(home):
    return TrackingResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=str(home / "mlruns"))


@pytest.fixture(scope="module")
def exported(home, tracking):
    """A tiny model registered three times, so the one served is version 3."""
    model_dir = build_tiny_model(home / "models" / MODEL, train_steps=60)
    run_id = tracking.start_run("serving-test", {})
    versions = [tracking.register_model(MODEL, str(model_dir), run_id) for _ in range(3)]
    assert versions[-1] == "3"
    return ExportedModel(path=str(model_dir), registered_name=MODEL, version="3", mlflow_run_id=run_id,
                         data_commit="commit-xyz")


@pytest.fixture(scope="module")
def deployed(serving, exported, tracking):
    """The endpoint asset, invoked directly with its resource; always stopped afterwards."""
    quantized = QuantizedModel(path="", source=exported, size_ratio=0.5, perplexity_delta=0.0)
    try:
        out = endpoint(dg.build_asset_context(resources={"serving": serving, "tracking": tracking}),
                       config=EndpointConfig(),
                       exported_model=exported, quantized_model=quantized)
        yield out
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def url(deployed):
    return deployed.value.url


def chat(url, **body):
    return httpx.post(f"{url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8, **body})


def test_endpoint_asset_deploys_smoke_tests_and_promotes(deployed, serving, exported, tracking):
    value, meta = deployed.value, deployed.metadata
    assert value.url == f"http://127.0.0.1:{serving.gateway_port}"
    assert (value.model, value.model_version, value.mlflow_run_id, value.data_commit) == (
        MODEL, "3", exported.mlflow_run_id, "commit-xyz")
    assert meta["smoke_reply"].value
    assert meta["model_version"].value == "3" and meta["data_commit"].value == "commit-xyz"
    assert tracking.promoted_version(MODEL) == "3"
    status = serving.status()
    assert {name: p["running"] for name, p in status["processes"].items()} == {"backend": True, "gateway": True}
    assert status["processes"]["backend"]["command"][1:3] == ["serve", exported.path]


def test_health(url):
    resp = httpx.get(f"{url}/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok" and resp.json()["model_version"] == "3"


def test_models_lists_the_public_name(url, exported):
    data = httpx.get(f"{url}/v1/models").json()["data"]
    assert [(m["id"], m["root"], m["version"]) for m in data] == [(MODEL, exported.path, "3")]


def test_chat_completion_returns_text_under_the_public_name(url):
    resp = chat(url, model=MODEL)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0
    assert resp.headers["x-llmops-model-version"] == "3"


def test_completions(url):
    resp = httpx.post(f"{url}/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": "The quick brown", "max_tokens": 6})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"]
    assert resp.json()["object"] == "text_completion"


def test_streaming_passes_through(url):
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}) as resp:
        assert resp.status_code == 200
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    assert events and all(e["model"] == MODEL for e in events)
    assert "".join(e["choices"][0].get("delta", {}).get("content") or "" for e in events)


def test_metrics_count_requests_and_tokens(url):
    before = scrape_gateway_metrics(url)
    assert chat(url).status_code == 200
    assert chat(url, model="no-such-model").status_code == 404
    after = scrape_gateway_metrics(url)
    assert after["gateway_requests_total"] == before["gateway_requests_total"] + 2
    assert after["gateway_request_errors_total"] == before["gateway_request_errors_total"] + 1
    assert after["gateway_generated_tokens_total"] > before["gateway_generated_tokens_total"]
    text = httpx.get(f"{url}/metrics").text
    assert 'gateway_request_latency_seconds_bucket{endpoint="/v1/chat/completions"' in text


@pytest.mark.parametrize("content, status, code", [
    (b'{"messages": [', 400, "invalid_json"),
    (b'["not", "an", "object"]', 400, "invalid_json"),
    (b'{"max_tokens": 4}', 400, "missing_required_parameter"),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
])
def test_bad_requests_get_openai_style_errors(url, content, status, code):
    resp = httpx.post(f"{url}/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert resp.status_code == status
    err = resp.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


def test_requests_past_the_context_window_are_refused_before_the_backend(url):
    """transformers serve's batching worker dies on such a request; the gateway must not forward it."""
    resp = chat(url, max_tokens=500)  # the tiny model's context is 128 tokens
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    long_prompt = httpx.post(f"{url}/v1/completions", json={"prompt": "The quick brown fox " * 40, "max_tokens": 4})
    assert long_prompt.status_code == 400
    assert httpx.get(f"{url}/health").status_code == 200
    no_max = httpx.post(f"{url}/v1/completions", json={"prompt": "The quick", "max_tokens": None}, timeout=60)
    assert no_max.status_code == 200, no_max.text  # max_tokens defaults to the room left


def test_api_key_is_required_when_set(deployed, serving, exported, home):
    """A second gateway with a key, in front of the same backend."""
    port = processes.free_port()
    run_dir = home / "keyed"
    gw = processes.start("gateway", serving.gateway_command(serving.current().backend_url, MODEL, exported.path, "3",
                                                            port), run_dir, env={"LLMOPS_API_KEY": "s3cret"})
    try:
        base = f"http://127.0.0.1:{port}"
        processes.wait_healthy(f"{base}/health", 60, gw)
        assert chat(base).status_code == 401
        assert chat(base).json()["error"]["code"] == "invalid_api_key"
        resp = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": "Bearer s3cret"}, timeout=60,
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert resp.status_code == 200
        assert "s3cret" not in " ".join(gw.command)  # the key travels in the environment, not argv
    finally:
        processes.stop_all(run_dir)
    assert not processes.is_running(gw.pid)


def test_gateway_reports_a_dead_backend_then_stop_all_stops_everything(deployed, serving, home, url):
    pids = {name: p["pid"] for name, p in serving.status()["processes"].items()}
    assert processes.stop(serving.run_dir, "backend")
    assert not processes.is_running(pids["backend"])
    resp = httpx.get(f"{url}/health")
    assert resp.status_code == 503 and resp.json()["status"] == "unavailable"
    assert chat(url).status_code == 502

    # `make down`: the CLI finds the gateway by its pid file under $LLMOPS_HOME/run
    env = {**os.environ, "LLMOPS_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "llm_assets.deployment.processes", "stop-all"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "gateway" in done.stdout
    assert not processes.is_running(pids["gateway"])
    assert processes.status(serving.run_dir) == {}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")


def test_deploy_refuses_a_gateway_port_taken_by_someone_else(tmp_path, exported):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        serving = ServingResource(run_dir=str(tmp_path / "run"), gateway_port=s.getsockname()[1])
        with pytest.raises(RuntimeError, match="is taken"):
            serving.deploy(exported.path, MODEL, "3")
    assert processes.status(tmp_path / "run") == {}


def test_temporary_backend_serves_beside_a_deployment_and_stops_on_exit(tmp_path, exported):
    serving = ServingResource(run_dir=str(tmp_path / "run"), startup_timeout=180)
    (tmp_path / "run").mkdir()
    with serving.temporary_backend(exported.path) as (url, model):
        resp = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "The quick", "max_tokens": 4},
                          timeout=60)
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
        assert serving.stop() == []  # stopping the deployment leaves the evaluation backend alone
        pid = processes.read(tmp_path / "run" / "eval", "backend").pid
        assert processes.is_running(pid)
    assert not processes.is_running(pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")
