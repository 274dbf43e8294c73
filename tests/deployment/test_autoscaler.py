"""The autoscaler: `decide` case by case, then one real run (autoscaler, gateway and stand-in model servers
as processes on 127.0.0.1) that scales up under load and back down when the load stops."""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Event

import httpx
import pytest

from llm_assets.deployment import processes
from llm_assets.deployment.autoscaler import Observation, Policy, decide, parse_metrics, quantile_ms

ROOT = Path(__file__).resolve().parents[2]
POLICY = Policy(min_replicas=1, max_replicas=3, queue_high=2.0, queue_low=0.5, p95_high_ms=1000, polls=2,
                idle_polls=3)


@pytest.mark.parametrize("obs, streaks, action, target, reason", [
    (Observation(2, 2, 10), (0, 0), "hold", 2, "queue 5.00 > 2.0 (1/2 polls)"),
    (Observation(2, 2, 10), (1, 0), "up", 3, "queue 5.00 > 2.0 for 2 polls"),
    (Observation(3, 3, 30), (5, 0), "hold", 3, "but at max 3"),
    (Observation(2, 1, 3), (1, 0), "up", 3, "queue 3.00"),  # queue is per *healthy* replica
    (Observation(2, 2, 2, p95_ms=2500.0), (1, 0), "up", 3, "p95 2500 ms > 1000 ms"),
    (Observation(2, 2, 3, p95_ms=200.0), (1, 4), "hold", 2, "within"),  # in between resets both streaks
    (Observation(2, 2, 0), (0, 2), "down", 1, "queue 0.00 <= 0.5 for 3 polls"),
    (Observation(2, 2, 0, p95_ms=5000.0), (0, 2), "hold", 2, "p95"),  # slow is never idle
    (Observation(1, 1, 0), (0, 9), "hold", 1, "idle at min 1"),
    (Observation(0, 0, 0), (0, 0), "up", 1, "0 replicas < min 1"),
    (Observation(5, 5, 0), (0, 0), "down", 4, "5 replicas > max 3"),
])
def test_decide(obs, streaks, action, target, reason):
    d = decide(POLICY, obs, *streaks)
    assert (d.action, d.target) == (action, target)
    assert reason in d.reason
    if action != "hold":
        assert (d.high_streak, d.idle_streak) == (0, 0)  # a fresh count after each change


def test_decide_streaks_count_up_and_reset():
    d = decide(POLICY, Observation(1, 1, 5))
    assert (d.high_streak, d.idle_streak) == (1, 0)
    d = decide(POLICY, Observation(1, 1, 0), d.high_streak, d.idle_streak)
    assert (d.high_streak, d.idle_streak) == (0, 1)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="min_replicas"):
        Policy(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="queue_low"):
        Policy(queue_low=3, queue_high=2)


def test_p95_from_histogram_deltas():
    before = {0.1: 0, 0.5: 0, 1.0: 0, float("inf"): 0}
    now = {0.1: 50, 0.5: 90, 1.0: 100, float("inf"): 100}
    p95, n = quantile_ms(now, before)
    assert n == 100 and p95 == pytest.approx(750.0)  # 95th of 100 lies halfway through (0.5, 1.0]
    assert quantile_ms(now, now) == (None, 0.0)
    text = ('gateway_replica_up{model="m",replica="http://a",version="1"} 1\n'
            'gateway_replica_up{model="m",replica="http://b",version="1"} 0\n'
            'gateway_outstanding_requests{model="m",replica="http://a",version="1"} 3\n')
    snap = parse_metrics(text)
    assert (snap.replicas[("m", "1")], snap.healthy[("m", "1")], snap.outstanding[("m", "1")]) == (2, 1, 3.0)


def test_autoscaler_scales_up_under_load_and_down_when_idle(tmp_path):
    """Stand-in model servers (0.3 s per answer), a real gateway and the autoscaler process."""
    run = tmp_path / "run"
    fleet = processes.Fleet(str(run), [sys.executable, "-m", "tests.deployment.standin_backend", "--port", "{port}",
                                       "--name", "{port}", "--delay", "0.3"],
                            admin_key="scale-key", env={"PYTHONPATH": str(ROOT)}, startup_timeout=60)
    try:
        [first] = fleet.start_replicas("m", "1", "standin", "standin", 1)
        (run / "routes.json").write_text(json.dumps({"models": {"m": {"versions": {"1": {
            "weight": 1.0, "backend_model": "standin", "replicas": [first]}}}}}))
        port = processes.free_port()
        gw = processes.start("gateway", [sys.executable, "-m", "llm_assets.deployment.gateway", "--routes",
                                         str(run / "routes.json"), "--port", str(port), "--health-interval", "0.5"],
                             run, env={"LLMOPS_ADMIN_KEY": "scale-key", "LLMOPS_API_KEY": ""}, cwd=ROOT)
        fleet.gateway_url = f"http://127.0.0.1:{port}"
        processes.wait_healthy(f"{fleet.gateway_url}/health", 60, gw)
        fleet.save()
        processes.start("autoscaler", [sys.executable, "-m", "llm_assets.deployment.autoscaler", "--run-dir", str(run),
                                       "--min", "1", "--max", "2", "--queue-high", "2", "--polls", "2",
                                       "--idle-polls", "3", "--interval", "0.3"],
                        run, env={"LLMOPS_ADMIN_KEY": "scale-key"}, cwd=ROOT)

        def replicas():
            return fleet.routes()["models"]["m"]["versions"]["1"]["replicas"]

        stop = Event()

        def client(i):
            statuses = []
            while not stop.is_set():
                statuses.append(httpx.post(f"{fleet.gateway_url}/v1/chat/completions", timeout=30, json={
                    "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2}).status_code)
            return statuses

        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(client, i) for i in range(10)]
            scaled_up = _wait(lambda: len(replicas()) == 2, 90)
            time.sleep(1.0)  # both replicas serve for a moment
            stop.set()
            statuses = [s for f in futures for s in f.result()]
        assert scaled_up, (run / "autoscaler.log").read_text()
        assert statuses and set(statuses) == {200}  # scaling, drain included, failed no request

        def decisions():
            return [json.loads(line) for line in (run / "logs" / "autoscaler.jsonl").read_text().splitlines()]

        assert _wait(lambda: any(d["action"] == "down" for d in decisions()), 60), (run / "autoscaler.log").read_text()
        assert len(replicas()) == 1
        up = next(d for d in decisions() if d["action"] == "up")
        down = next(d for d in decisions() if d["action"] == "down")
        assert up["queue"] > 2 and up["replicas"] == 1 and up["target"] == 2 and up["replica"] and not up["error"]
        assert down["queue"] <= 0.5 and down["replicas"] == 2 and down["target"] == 1 and not down["error"]
        assert down["replica"] == up["replica"]  # the added replica is the one removed and stopped
        assert not any(p.meta.get("url") == up["replica"] for p in fleet.replicas())
    finally:
        processes.stop_all(run)


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
