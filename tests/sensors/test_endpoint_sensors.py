"""Endpoint sensors on real stored state: materializations in a real Dagster instance, a real HTTP server."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from sensors.endpoint import (
    RegressionThresholds, endpoint_health_sensor, make_live_regression_sensor, regression_reason,
)
from tests.webui import free_port

HEALTHY = {"latency_p50_ms": 120.0, "latency_p95_ms": 300.0, "tokens_per_s": 40.0, "error_rate": 0.0,
           "requests": 16}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def record_metrics(instance, versions=("1",), **overrides):
    """An endpoint_metrics measurement of `versions` (one: that version served alone)."""
    instance.report_runless_asset_event(dg.AssetMaterialization("endpoint_metrics", metadata={
        **HEALTHY, "model_version": versions[0], "model_versions": list(versions), **overrides}))


def run_sensor(sensor, instance, cursor=None):
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def skipped(result) -> str:
    """The skip message of a SensorResult or SkipReason."""
    return (result.skip_reason if isinstance(result, dg.SensorResult) else result).skip_message


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def regression_sensor(clock):
    return make_live_regression_sensor(cooldown_s=600, clock=clock)


def test_regression_sensor_is_quiet_without_measurements(instance, regression_sensor):
    assert isinstance(run_sensor(regression_sensor, instance), dg.SkipReason)


def test_regression_sensor_is_quiet_on_a_healthy_promoted_version(instance, regression_sensor):
    record_metrics(instance, ("1",))
    record_metrics(instance, ("1", "2"), error_rate=0.5)  # the canary window is canary_analysis's
    result = run_sensor(regression_sensor, instance)
    assert not result.run_requests and "not one version serving alone" in skipped(result)
    record_metrics(instance, ("2",), latency_p95_ms=330.0)
    result = run_sensor(regression_sensor, instance, result.cursor)
    assert not result.run_requests and skipped(result).startswith("version 2 within limits against version 1")


def test_regression_sensor_is_quiet_on_the_first_version(instance, regression_sensor):
    record_metrics(instance, ("1",), error_rate=0.9)
    result = run_sensor(regression_sensor, instance)
    assert not result.run_requests and "no earlier measurement" in skipped(result)


def test_regression_sensor_requests_one_rollback_per_event_with_its_reason(instance, regression_sensor):
    record_metrics(instance, ("1",), latency_p95_ms=280.0)
    record_metrics(instance, ("1",), latency_p95_ms=320.0)  # the baseline is the median: 300
    record_metrics(instance, ("2",), error_rate=0.25, latency_p95_ms=900.0)
    result = run_sensor(regression_sensor, instance)
    (request,) = result.run_requests
    reason = request.tags["llmops/reason"]
    assert reason.startswith("version 2 against previous version 1: error_rate 0.250 vs 0.000")
    assert "latency_p95_ms 900 vs 300: 3.00x (limit 1.5x)" in reason
    assert request.tags["llmops/sensor"] == "live_regression_sensor"
    assert (request.tags["llmops/model_version"], request.tags["llmops/rollback_to"]) == ("2", "1")
    assert request.run_key.startswith("rollback-")
    # The same measurement never triggers twice.
    again = run_sensor(regression_sensor, instance, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason) and again.skip_message == "no new endpoint_metrics measurement"


def test_regression_sensor_cools_down_and_never_compares_with_a_rolled_back_version(instance, clock,
                                                                                   regression_sensor):
    record_metrics(instance, ("1",))
    record_metrics(instance, ("2",), error_rate=0.6)
    first = run_sensor(regression_sensor, instance)
    assert len(first.run_requests) == 1
    clock.now += 60
    record_metrics(instance, ("2",), error_rate=0.7)  # the rollback has not happened yet
    waiting = run_sensor(regression_sensor, instance, first.cursor)
    assert isinstance(waiting, dg.SkipReason) and "cooling down 540s more" in waiting.skip_message
    clock.now += 600
    second = run_sensor(regression_sensor, instance, first.cursor)  # the same event, now past the cool-down
    (request,) = second.run_requests
    assert request.run_key != first.run_requests[0].run_key and "error_rate 0.700" in request.tags["llmops/reason"]
    # Version 1 serves again, slower than version 2 was: no rollback "back" to the rolled back version 2.
    clock.now += 3600
    record_metrics(instance, ("1",), latency_p95_ms=900.0)
    after = run_sensor(regression_sensor, instance, second.cursor)
    assert not after.run_requests and "no earlier measurement" in skipped(after)


def test_regression_reason_on_throughput_and_small_windows():
    limits = RegressionThresholds()
    assert regression_reason({**HEALTHY, "tokens_per_s": 10.0}, HEALTHY, limits) == \
        "tokens_per_s 10.0 vs 40.0: 0.25x (limit 0.5x)"
    assert regression_reason({**HEALTHY, "latency_p95_ms": float("nan")}, HEALTHY, limits) is None
    few = {**HEALTHY, "requests": 3, "latency_p95_ms": 3000.0}
    assert regression_reason(few, HEALTHY, limits) is None
    assert regression_reason({**few, "error_rate": 1.0}, HEALTHY, limits).startswith("error_rate 1.000")


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def live_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def record_endpoint(instance, url):
    instance.report_runless_asset_event(dg.AssetMaterialization("endpoint", metadata={"url": url}))


def test_health_sensor_is_quiet_while_the_endpoint_answers(instance, live_server):
    record_endpoint(instance, live_server)
    result = run_sensor(endpoint_health_sensor, instance)
    assert isinstance(result, dg.SkipReason) and "answered 200" in skipped(result)


def test_health_sensor_redeploys_a_dead_endpoint(instance):
    dead = f"http://127.0.0.1:{free_port()}"
    record_endpoint(instance, dead)
    request = run_sensor(endpoint_health_sensor, instance)
    assert isinstance(request, dg.RunRequest)
    assert "unreachable" in request.tags["llmops/reason"] and request.run_key.startswith("redeploy-")


def test_health_sensor_is_quiet_before_any_deployment(instance):
    assert isinstance(run_sensor(endpoint_health_sensor, instance), dg.SkipReason)
