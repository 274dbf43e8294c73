"""The `endpoint` asset on a real tiny model: `transformers serve` replicas + our gateway as detached
processes on 127.0.0.1.

The tests in this module share one deployment (2 replicas of version 3, later a canary version 4) and
run in order; the last one stops it with `python -m llm_assets.deployment.processes stop-all`, as
`make down` does.
"""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import httpx
import pytest

from llm_assets.artifacts import ExportedModel, QuantizedModel
from llm_assets.deployment import processes
from llm_assets.deployment.assets import EndpointConfig, endpoint
from llm_assets.deployment.gateway import RouteTable, choose_version
from resources.serving import ServingResource
from resources.tracking import TrackingResource
from tests.tiny_model import build_tiny_model

MODEL = "tiny-gpt"
NO_PROMPT = {"applied": "", "prompts": {}}  # prompt rollout has its own tests (test_rollout_assets.py)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("serving-home")


@pytest.fixture(scope="module")
def serving(home):
    return ServingResource(run_dir=str(home / "run"), gateway_port=processes.free_port(), startup_timeout=180,
                           replicas=2, health_interval=0.5)


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
                       exported_model=exported, quantized_model=quantized, prompt_registry=NO_PROMPT)
        yield out
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def url(deployed):
    return deployed.value.url


def chat(url, **body):
    return httpx.post(f"{url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8, **body})


def test_endpoint_asset_deploys_replicas_smoke_tests_and_promotes(deployed, serving, exported, tracking):
    value, meta = deployed.value, deployed.metadata
    assert value.url == f"http://127.0.0.1:{serving.gateway_port}"
    assert (value.model, value.model_version, value.mlflow_run_id, value.data_commit) == (
        MODEL, "3", exported.mlflow_run_id, "commit-xyz")
    assert meta["smoke_reply"].value and meta["role"].value == "stable"
    assert meta["model_version"].value == "3" and meta["data_commit"].value == "commit-xyz"
    assert meta["weights"].value == {"3": 1.0}
    assert tracking.promoted_version(MODEL) == "3"
    status = serving.status()
    procs = status["processes"]
    backends = [p for name, p in procs.items() if name.startswith("backend-3-")]
    assert len(backends) == 2 and all(p["running"] for p in backends) and procs["gateway"]["running"]
    assert all(p["command"][1:3] == ["serve", exported.path] for p in backends)
    assert status["deployment"]["weights"] == {"3": 1.0}
    assert sorted(status["deployment"]["replicas"]["3"]) == sorted(p["meta"]["url"] for p in backends)
    routes = json.loads((Path(serving.run_dir) / "routes.json").read_text())
    assert routes["models"][MODEL]["versions"]["3"]["model_dir"] == exported.path


def test_health(url):
    resp = httpx.get(f"{url}/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok" and resp.json()["model_version"] == "3"
    assert all(r["up"] for r in resp.json()["replicas"][MODEL]["3"].values())


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


def test_metrics_count_requests_and_tokens_per_version(url):
    def totals():
        samples = _samples(url, "gateway_requests_total")
        return (sum(s.value for s in samples), sum(s.value for s in samples if s.labels["status"] != "200"),
                sum(s.value for s in _samples(url, "gateway_generated_tokens_total") if s.labels["version"] == "3"))

    before = totals()
    assert chat(url).status_code == 200
    assert chat(url, model="no-such-model").status_code == 404
    after = totals()
    assert after[0] == before[0] + 2 and after[1] == before[1] + 1 and after[2] > before[2]
    assert any(s.labels == {"endpoint": "/v1/chat/completions", "model": MODEL, "version": "3", "le": "+Inf"}
               for s in _samples(url, "gateway_request_latency_seconds_bucket"))


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


def replica_pids(serving, version):
    return {p["meta"]["url"]: p["pid"] for name, p in serving.status()["processes"].items()
            if name.startswith(f"backend-{version}-")}


def test_killing_a_replica_under_16_clients_fails_no_request(url, serving):
    """SIGKILL one of the two transformers replicas while 16 clients send requests: all of them succeed."""
    pids = replica_pids(serving, "3")
    assert len(pids) == 2
    victim_url, victim = sorted(pids.items())[0]

    answered = []

    def client(i):
        for _ in range(4):
            answered.append(chat(url, user=f"client-{i}", max_tokens=6).status_code)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client, i) for i in range(16)]
        while len(answered) < 16 and not all(f.done() for f in futures):  # killed with 48 requests to go
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        for f in futures:
            f.result()
    assert answered == [200] * 64
    assert not processes.is_running(victim)
    deadline = time.monotonic() + 10  # out of rotation by a failed request, else by the next health check
    while (up := {s.labels["replica"]: s.value for s in _samples(url, "gateway_replica_up")})[victim_url] and (
            time.monotonic() < deadline):
        time.sleep(0.1)
    assert up[victim_url] == 0 and sum(up.values()) == 1
    # the fleet heals: the dead replica drained out of the table and a fresh one in rotation
    assert serving.remove_replica("3", url=victim_url) == victim_url
    new_url = serving.add_replica("3")
    assert sorted(serving.current().versions["3"]["replicas"]) == sorted([*(set(pids) - {victim_url}), new_url])
    assert all(chat(url, user=f"after-{i}").status_code == 200 for i in range(4))


def _samples(url, name):
    from prometheus_client.parser import text_string_to_metric_families

    return [s for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text) for s in f.samples
            if s.name == name]


@pytest.fixture(scope="module")
def canary(deployed, serving, tracking, home, exported):
    """Version 4 (another tiny model) through the endpoint asset while version 3 serves: a 30% canary."""
    model_dir = build_tiny_model(home / "models" / f"{MODEL}-v4", train_steps=30, seed=1)
    assert tracking.register_model(MODEL, str(model_dir), exported.mlflow_run_id) == "4"
    v4 = ExportedModel(path=str(model_dir), registered_name=MODEL, version="4",
                       mlflow_run_id=exported.mlflow_run_id, data_commit="commit-abc")
    quantized = QuantizedModel(path="", source=v4, size_ratio=0.5, perplexity_delta=0.0)
    return endpoint(dg.build_asset_context(resources={"serving": serving, "tracking": tracking}),
                    config=EndpointConfig(canary_weight=0.3), exported_model=v4, quantized_model=quantized,
                    prompt_registry=NO_PROMPT)


def test_endpoint_asset_deploys_a_new_version_as_a_canary(canary, serving, tracking):
    meta = canary.metadata
    assert canary.value.model_version == "4" and meta["role"].value == "canary"
    assert meta["weights"].value == pytest.approx({"3": 0.7, "4": 0.3})
    assert meta["stable_version"].value == "3" and meta["smoke_reply"].value
    assert tracking.promoted_version(MODEL) == "3"  # canary_analysis decides on promotion
    assert len(replica_pids(serving, "4")) == 2 and len(replica_pids(serving, "3")) == 2


def test_canary_split_is_sticky_per_user_and_near_its_weight(canary, url, serving):
    users = [f"user-{i}" for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda u: chat(url, user=u, max_tokens=2), users))
        again = list(pool.map(lambda u: chat(url, user=u, max_tokens=2), users))
    assert all(r.status_code == 200 for r in first + again), [r.text for r in first + again if r.status_code != 200]
    versions = [r.headers["x-llmops-model-version"] for r in first]
    assert versions == [r.headers["x-llmops-model-version"] for r in again]
    assert abs(versions.count("4") / len(versions) - 0.3) < 0.12
    route = RouteTable.parse(serving.current().routes).models[MODEL]
    assert versions == [choose_version(route, u).name for u in users]
    log = [json.loads(line) for line in (Path(serving.run_dir) / "logs" / "requests.jsonl").read_text().splitlines()]
    logged = {r["request_id"]: r["model_version"] for r in log}
    assert all(logged[r.headers["x-llmops-request-id"]] == r.headers["x-llmops-model-version"] for r in first)


def test_api_key_is_required_when_set(deployed, serving, exported, home):
    """A second gateway with a key, in front of the same backend."""
    port = processes.free_port()
    run_dir = home / "keyed"
    current = serving.current()
    gw = processes.start("gateway", serving.gateway_command(current.backend_url, MODEL, current.backend_model, "3",
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


def test_promoting_the_canary_stops_the_old_version(canary, serving, url):
    before = replica_pids(serving, "3")
    current = serving.promote("4")
    assert current.weights == {"4": 1.0} and current.model_version == "4"
    assert replica_pids(serving, "3") == {} and not any(processes.is_running(p) for p in before.values())
    assert {chat(url, user=f"p{i}").headers["x-llmops-model-version"] for i in range(6)} == {"4"}


def test_gateway_reports_dead_backends_then_stop_all_stops_everything(deployed, serving, home, url):
    pids = {name: p["pid"] for name, p in serving.status()["processes"].items()}
    for name in [n for n in pids if n.startswith("backend-")]:
        assert processes.stop(serving.run_dir, name)
        assert not processes.is_running(pids[name])
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
