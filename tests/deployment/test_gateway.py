"""The gateway's routing, health checks, logs, admin API and bad-input handling, on real HTTP servers.

The model servers here are stand-ins (tests/deployment/standin_backend.py: real uvicorn servers that echo
what they receive and can be switched to answer garbage); the gateway is the real process. The same
behaviour on real `transformers serve` replicas is in test_serving.py.
"""

import json
import signal
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_assets.deployment import processes
from llm_assets.deployment.gateway import (RouteError, RouteTable, choose_prompt, choose_version, pick_weighted,
                                           sticky_fraction)

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": "Bearer admin-s3cret"}
MODEL = "m"


def start_standin(run_dir, name, delay=0.0):
    port = processes.free_port()
    proc = processes.start(f"standin-{name}", [sys.executable, "-m", "tests.deployment.standin_backend", "--port",
                                               str(port), "--name", name, "--delay", str(delay)], run_dir, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    processes.wait_healthy(f"{url}/health", 60, proc)
    return url


def start_gateway(run_dir, args, admin_key="admin-s3cret"):
    port = processes.free_port()
    cmd = [sys.executable, "-m", "llm_assets.deployment.gateway", *args, "--port", str(port),
           "--health-interval", "0.3", "--health-timeout", "1.0"]
    env = {"LLMOPS_API_KEY": "", "LLMOPS_ADMIN_KEY": admin_key}
    proc = processes.start("gateway", cmd, run_dir, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    processes.wait_healthy(f"{url}/health", 60, proc)
    return url


def routes_for(urls):
    return {"models": {MODEL: {"prompt": "assistant", "versions": {
        "1": {"weight": 0.75, "backend_model": "standin-1", "replicas": [urls["a"], urls["b"]]},
        "2": {"weight": 0.25, "backend_model": "standin-2", "replicas": [urls["c"]]}}}},
        "prompts": {"assistant": {"versions": {"p1": {"template": "You are terse.", "weight": 0.5},
                                               "p2": {"template": "You are verbose.", "weight": 0.5}}}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Stand-ins a, b (version 1) and c (version 2) behind one gateway with a prompt A/B."""
    run = tmp_path_factory.mktemp("gateway")
    try:
        urls = {n: start_standin(run, n, delay=0.05) for n in "abc"}
        (run / "routes.json").write_text(json.dumps(routes_for(urls)))
        url = start_gateway(run, ["--routes", str(run / "routes.json"), "--request-log", str(run / "logs/requests.jsonl"),
                                  "--feedback-log", str(run / "logs/feedback.jsonl")])
        yield {"run": run, "url": url, "replicas": urls}
    finally:
        processes.stop_all(run)


def chat(url, user=None, content="hello", **body):
    return httpx.post(f"{url}/v1/chat/completions", timeout=30,
                      json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
                            **({"user": user} if user else {}), **body})


def users_of(version, n, table=None):
    table = table or RouteTable.parse(routes_for({"a": "http://a", "b": "http://b", "c": "http://c"}))
    route = table.models[MODEL]
    return [u for u in (f"user-{i}" for i in range(10_000)) if choose_version(route, u).name == version][:n]


def metric(url, name, **labels):
    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def log_records(run):
    path = run / "logs" / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------- the route table, pure


def test_pick_weighted_walks_cumulative_weights_in_order():
    items = [("1", 0.9), ("2", 0.1)]
    assert [pick_weighted(items, u) for u in (0.0, 0.5, 0.8999, 0.9, 0.99)] == ["1", "1", "1", "2", "2"]
    assert pick_weighted([("a", 0.0), ("b", 3.0)], 0.0) == "b"  # weights need not sum to 1; 0 is never picked
    assert 0 <= sticky_fraction("m:alice") < 1 and sticky_fraction("m:alice") == sticky_fraction("m:alice")


def test_sticky_version_split_is_near_its_weight_and_avoids_versions_without_healthy_replicas():
    table = RouteTable.parse(routes_for({"a": "http://a", "b": "http://b", "c": "http://c"}))
    route = table.models[MODEL]
    picks = [choose_version(route, f"user-{i}").name for i in range(4000)]
    assert abs(picks.count("2") / len(picks) - 0.25) < 0.03
    assert all(choose_version(route, f"user-{i}").name == picks[i] for i in range(200))
    prompts = [choose_prompt(table.prompts["assistant"], "assistant", f"user-{i}").name for i in range(4000)]
    assert abs(prompts.count("p2") / len(prompts) - 0.5) < 0.03
    route.versions["2"].replicas[0].up = False
    assert {choose_version(route, f"user-{i}").name for i in range(200)} == {"1"}


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.update(models={}), "routes.models must be a non-empty object"),
    (lambda t: t["models"][MODEL]["versions"]["1"].update(weight=-1), "versions.1.weight must be a number >= 0"),
    (lambda t: t["models"][MODEL]["versions"]["1"].update(replicas=[]), "versions.1.replicas must be a non-empty"),
    (lambda t: t["models"][MODEL]["versions"]["2"].update(replicas=["ftp://x"]), "versions.2.replicas"),
    (lambda t: t["models"][MODEL].update(prompt="nope"), "names no entry of routes.prompts"),
    (lambda t: [v.update(weight=0) for v in t["models"][MODEL]["versions"].values()], "needs a version with weight > 0"),
    (lambda t: t.update(extra=1), "unknown keys"),
])
def test_invalid_route_tables_name_the_bad_field(mutate, message):
    table = routes_for({"a": "http://a", "b": "http://b", "c": "http://c"})
    mutate(table)
    with pytest.raises(RouteError, match=message):
        RouteTable.parse(table)


# ---------------------------------------------------------------- routing through a real gateway


def test_version_split_through_the_gateway_is_sticky_per_user_and_near_its_weight(stack):
    url = stack["url"]
    users = [f"user-{i}" for i in range(120)]
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda u: chat(url, user=u), users))
        again = list(pool.map(lambda u: chat(url, user=u), users))
    assert all(r.status_code == 200 for r in first + again)
    versions = [r.headers["x-llmops-model-version"] for r in first]
    assert versions == [r.headers["x-llmops-model-version"] for r in again]  # sticky
    assert abs(versions.count("2") / len(versions) - 0.25) < 0.1
    expected = users_of("2", 120)
    assert {u for u, v in zip(users, versions) if v == "2"} == {u for u in users if u in expected}
    # the backend got its own model id; the client sees the public name
    assert {r.json()["received_model"] for r in first} == {"standin-1", "standin-2"}
    assert {r.json()["model"] for r in first} == {MODEL}
    # the session header is the key when there is no user field
    by_session = [httpx.post(f"{url}/v1/chat/completions", headers={"x-llmops-session": "s-42"}, timeout=30,
                             json={"messages": [{"role": "user", "content": "hi"}]}) for _ in range(4)]
    assert len({r.headers["x-llmops-model-version"] for r in by_session}) == 1


def test_prompt_version_is_applied_as_the_first_system_message(stack):
    resp = chat(stack["url"], user="alice", messages=[{"role": "system", "content": "Client rules."},
                                                      {"role": "user", "content": "hi"}])
    assert resp.status_code == 200
    pv = resp.headers["x-llmops-prompt-version"]
    template = {"p1": "You are terse.", "p2": "You are verbose."}[pv]
    sent = json.loads(resp.json()["choices"][0]["message"]["content"].split(": ", 1)[1])
    assert sent == [{"role": "system", "content": template}, {"role": "system", "content": "Client rules."},
                    {"role": "user", "content": "hi"}]
    assert chat(stack["url"], user="alice").headers["x-llmops-prompt-version"] == pv
    pvs = {chat(stack["url"], user=f"u{i}").headers["x-llmops-prompt-version"] for i in range(20)}
    assert pvs == {"p1", "p2"}
    completion = httpx.post(f"{stack['url']}/v1/completions", json={"prompt": "hi", "user": "alice"}, timeout=30)
    assert completion.status_code == 200 and "x-llmops-prompt-version" not in completion.headers


def test_least_outstanding_spreads_one_versions_load_over_its_replicas(stack):
    users = users_of("1", 16)
    with ThreadPoolExecutor(16) as pool:
        served = [r.json()["served_by"] for r in pool.map(lambda u: chat(stack["url"], user=u), users)]
    assert set(served) == {"a", "b"}
    assert min(served.count("a"), served.count("b")) >= 4


def test_streaming_passes_through_with_headers_and_is_logged(stack):
    with httpx.stream("POST", f"{stack['url']}/v1/chat/completions", timeout=30,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                            "user": "streamer"}) as resp:
        assert resp.status_code == 200
        rid = resp.headers["x-llmops-request-id"]
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    assert events and all(e["model"] == MODEL for e in events)
    rec = next(r for r in log_records(stack["run"]) if r["request_id"] == rid)
    assert rec["stream"] is True and rec["status"] == 200 and rec["response"].endswith(": streamed")
    assert rec["completion_tokens"] == 3 and rec["ttft_ms"] is not None


@pytest.mark.parametrize("mode", ["garbage", "slow", "error"])
def test_a_replica_failing_health_checks_leaves_rotation_and_comes_back(stack, mode):
    url, b = stack["url"], stack["replicas"]["b"]
    httpx.post(f"{b}/_mode", json={"health": mode})
    try:
        assert wait_for(lambda: metric(url, "gateway_replica_up", replica=b) == 0), f"{mode}: b still in rotation"
        users = users_of("1", 10)
        served = {chat(url, user=u).json()["served_by"] for u in users}
        assert served == {"a"}
    finally:
        httpx.post(f"{b}/_mode", json={"health": "ok"})
    assert wait_for(lambda: metric(url, "gateway_replica_up", replica=b) == 1), f"{mode}: b not back"


def test_a_replica_answering_garbage_is_retried_on_another_with_no_failed_request(stack):
    url, a = stack["url"], stack["replicas"]["a"]
    before = len(log_records(stack["run"]))
    httpx.post(f"{a}/_mode", json={"completions": "garbage"})
    try:
        resps = [chat(url, user=u) for u in users_of("1", 8)]
    finally:
        httpx.post(f"{a}/_mode", json={"completions": "ok"})
    assert [r.status_code for r in resps] == [200] * 8
    assert {r.json()["served_by"] for r in resps} == {"b"}
    recs = log_records(stack["run"])[before:]
    assert any(r["retries"] >= 1 for r in recs), recs
    assert metric(url, "gateway_replica_failures_total", replica=a) >= 1
    assert wait_for(lambda: metric(url, "gateway_replica_up", replica=a) == 1)  # its /health passes: back


def test_request_log_records_versions_and_feedback_is_tied_to_them(stack):
    run, url = stack["run"], stack["url"]
    resp = chat(url, user="bob", content="what is a canary?")
    rid = resp.headers["x-llmops-request-id"]
    rec = next(r for r in log_records(run) if r["request_id"] == rid)
    assert {k: rec[k] for k in ("endpoint", "model", "model_version", "prompt_name", "prompt_version", "user",
                                 "status", "stream", "error", "prompt")} == {
        "endpoint": "/v1/chat/completions", "model": MODEL, "model_version": resp.headers["x-llmops-model-version"],
        "prompt_name": "assistant", "prompt_version": resp.headers["x-llmops-prompt-version"], "user": "bob",
        "status": 200, "stream": False, "error": "", "prompt": "what is a canary?"}
    assert rec["replica"] in stack["replicas"].values() and rec["latency_ms"] > 0
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["retries"]) == (3, 2, 0)
    assert rec["response"].startswith("from ") and rec["timestamp"].endswith("+00:00")

    ok = httpx.post(f"{url}/v1/feedback", json={"request_id": rid, "rating": 4, "thumbs": "up", "comment": "nice"})
    assert ok.status_code == 200, ok.text
    feedback = [json.loads(line) for line in (run / "logs" / "feedback.jsonl").read_text().splitlines()]
    assert feedback[-1] == {**ok.json(), "request_id": rid, "rating": 4, "thumbs": "up", "comment": "nice",
                            "model": MODEL, "model_version": rec["model_version"],
                            "prompt_version": rec["prompt_version"]}
    for body, status in [({"request_id": "req-nope", "rating": 3}, 404),
                         ({"request_id": rid}, 400),
                         ({"request_id": rid, "rating": 9}, 400),
                         ({"request_id": rid, "rating": True}, 400),
                         ({"request_id": rid, "thumbs": "sideways"}, 400),
                         ({"request_id": rid, "rating": 2, "comment": "x" * 3000}, 400),
                         ({"request_id": rid, "rating": 2, "extra": 1}, 400),
                         ({"rating": 2}, 400),
                         ([1, 2], 400)]:
        resp = httpx.post(f"{url}/v1/feedback", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["message"]
    resp = httpx.post(f"{url}/v1/feedback", content=b"{not json")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    assert len((run / "logs" / "feedback.jsonl").read_text().splitlines()) == len(feedback)  # nothing stored


BAD_BODIES = [
    (b'{"messages": [', 400, "invalid_json"),
    (b'["not", "an", "object"]', 400, "invalid_json"),
    (b'{"max_tokens": 4}', 400, "missing_required_parameter"),
    (b'{"messages": "hello"}', 400, "invalid_type"),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000000}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "user": 7}', 400, "invalid_type"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode(), 413, "request_too_large"),
]


@pytest.mark.parametrize("content, status, code", BAD_BODIES, ids=[c for _, _, c in BAD_BODIES][:4] + [
    "unknown_model", "negative_max_tokens", "zero_max_tokens", "huge_max_tokens", "string_max_tokens",
    "string_stream", "int_user", "huge_body"])
def test_bad_requests_get_openai_style_4xx(stack, content, status, code):
    resp = httpx.post(f"{stack['url']}/v1/chat/completions", content=content, timeout=30,
                      headers={"content-type": "application/json"})
    assert resp.status_code == status
    err = resp.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    assert resp.headers["x-llmops-request-id"]


def test_bad_requests_are_logged_and_counted_and_the_gateway_stays_healthy(stack):
    url = stack["url"]
    before = metric(url, "gateway_requests_total", status="400")
    resp = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": -1})
    assert resp.status_code == 400
    assert metric(url, "gateway_requests_total", status="400") == before + 1
    rec = next(r for r in log_records(stack["run"]) if r["request_id"] == resp.headers["x-llmops-request-id"])
    assert rec["status"] == 400 and "max_tokens" in rec["error"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_metrics_are_labelled_by_model_version_and_replica(stack):
    url = stack["url"]
    chat(url, user=users_of("2", 1)[0])
    text = httpx.get(f"{url}/metrics").text
    assert metric(url, "gateway_requests_total", model=MODEL, version="2", status="200") >= 1
    assert metric(url, "gateway_request_latency_seconds_count", model=MODEL, version="2") >= 1
    assert metric(url, "gateway_time_to_first_token_seconds_count", model=MODEL, version="2") >= 1
    assert metric(url, "gateway_generated_tokens_total", model=MODEL, version="2") >= 2
    for name in ("gateway_outstanding_requests", "gateway_replica_up"):
        for version, replica in (("1", "a"), ("1", "b"), ("2", "c")):
            assert f'{name}{{model="{MODEL}",replica="{stack["replicas"][replica]}",version="{version}"}}' in text
    assert 'prompt_version="p' in text


# ---------------------------------------------------------------- admin


def test_admin_routes_need_the_key_validate_persist_and_apply(stack):
    url, run = stack["url"], stack["run"]
    assert httpx.get(f"{url}/admin/routes").status_code == 401
    assert httpx.get(f"{url}/admin/routes", headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == \
        "invalid_admin_key"
    routes = httpx.get(f"{url}/admin/routes", headers=ADMIN).json()
    assert routes["models"][MODEL]["versions"]["2"]["weight"] == 0.25

    bad = json.loads(json.dumps(routes))
    bad["models"][MODEL]["versions"]["2"]["weight"] = "lots"
    resp = httpx.put(f"{url}/admin/routes", headers=ADMIN, json=bad)
    assert resp.status_code == 400 and "versions.2.weight" in resp.json()["error"]["message"]
    assert httpx.put(f"{url}/admin/routes", headers=ADMIN, content=b"{").status_code == 400

    new = json.loads(json.dumps(routes))
    new["models"][MODEL]["versions"]["1"]["weight"] = 0.0
    new["models"][MODEL]["versions"]["2"]["weight"] = 1.0
    try:
        assert httpx.put(f"{url}/admin/routes", headers=ADMIN, json=new).status_code == 200
        assert json.loads((run / "routes.json").read_text())["models"][MODEL]["versions"]["2"]["weight"] == 1.0
        assert {chat(url, user=f"w{i}").headers["x-llmops-model-version"] for i in range(10)} == {"2"}
    finally:
        assert httpx.put(f"{url}/admin/routes", headers=ADMIN, json=routes).status_code == 200


def test_admin_replicas_add_and_drain(stack):
    url, run = stack["url"], stack["run"]
    d = start_standin(run, "d", delay=0.05)
    body = {"model": MODEL, "version": "2", "url": d}
    assert httpx.post(f"{url}/admin/replicas", json=body).status_code == 401
    resp = httpx.post(f"{url}/admin/replicas", headers=ADMIN, json=body)
    assert resp.status_code == 200 and d in resp.json()["models"][MODEL]["versions"]["2"]["replicas"]
    assert httpx.post(f"{url}/admin/replicas", headers=ADMIN, json=body).status_code == 409
    users = users_of("2", 8)
    with ThreadPoolExecutor(8) as pool:
        served = {r.json()["served_by"] for r in pool.map(lambda u: chat(url, user=u), users)}
    assert served == {"c", "d"}
    resp = httpx.request("DELETE", f"{url}/admin/replicas", headers=ADMIN, json=body)
    assert resp.status_code == 200 and resp.json()["drained"] is True
    assert d not in json.loads((run / "routes.json").read_text())["models"][MODEL]["versions"]["2"]["replicas"]
    last = {"model": MODEL, "version": "2", "url": stack["replicas"]["c"]}
    assert httpx.request("DELETE", f"{url}/admin/replicas", headers=ADMIN, json=last).status_code == 409
    assert httpx.post(f"{url}/admin/replicas", headers=ADMIN, json={**body, "version": "9"}).status_code == 404
    assert httpx.post(f"{url}/admin/replicas", headers=ADMIN, json=[1]).status_code == 400
    processes.stop(run, "standin-d")


# ---------------------------------------------------------------- single-backend shorthand, kill a replica


def test_single_backend_shorthand_serves_replicas_and_admin_is_off_without_a_key(tmp_path):
    try:
        a, b = start_standin(tmp_path, "a"), start_standin(tmp_path, "b")
        url = start_gateway(tmp_path, ["--backend-url", a, "--backend-url", b, "--model-name", "x",
                                       "--model-version", "7"], admin_key="")
        resp = chat(url, model="x")
        assert resp.status_code == 200 and resp.headers["x-llmops-model-version"] == "7"
        assert resp.json()["received_model"] == "standin-a"  # asked from the first replica's /v1/models
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["version"] == "7"
        resp = httpx.get(f"{url}/admin/routes", headers=ADMIN)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_disabled"
        assert httpx.post(f"{url}/v1/feedback", json={"request_id": "x", "rating": 1}).status_code == 404
    finally:
        processes.stop_all(tmp_path)


def test_killing_a_standin_replica_under_16_clients_fails_no_request(tmp_path):
    try:
        urls = [start_standin(tmp_path, n, delay=0.1) for n in "ab"]
        url = start_gateway(tmp_path, ["--backend-url", urls[0], "--backend-url", urls[1], "--model-name", MODEL,
                                       "--backend-model", "standin"])
        victim = processes.read(tmp_path, "standin-a").pid

        def client(i):
            return [chat(url, user=f"c{i}-{j}").status_code for j in range(6)]

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(client, i) for i in range(16)]
            time.sleep(0.3)
            os.kill(victim, signal.SIGKILL)
            statuses = [s for f in futures for s in f.result()]
        assert statuses == [200] * 96
        assert metric(url, "gateway_replica_up", replica=urls[0]) == 0
    finally:
        processes.stop_all(tmp_path)
