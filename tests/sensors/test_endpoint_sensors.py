"""Endpoint sensors on real stored state: materializations in a real Dagster instance, a real HTTP server."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from sensors.endpoint import (
    DriftThresholds, degradation_reason, endpoint_drift_sensor, endpoint_health_sensor,
)
from tests.webui import free_port

HEALTHY = {"latency_p50_ms": 120.0, "latency_p95_ms": 300.0, "tokens_per_s": 40.0, "error_rate": 0.0,
           "requests": 16, "model_version": "3"}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def record_metrics(instance, **overrides):
    instance.report_runless_asset_event(
        dg.AssetMaterialization("endpoint_metrics", metadata={**HEALTHY, **overrides}))


def run_sensor(sensor, instance, cursor=None):
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_drift_sensor_is_quiet_without_measurements(instance):
    assert isinstance(run_sensor(endpoint_drift_sensor, instance), dg.SkipReason)


def test_drift_sensor_is_quiet_on_healthy_metrics(instance):
    record_metrics(instance)
    record_metrics(instance, latency_p95_ms=320.0)
    result = run_sensor(endpoint_drift_sensor, instance)
    assert not result.run_requests and result.cursor


def test_drift_sensor_requests_a_retrain_with_its_reason(instance):
    record_metrics(instance)
    record_metrics(instance, error_rate=0.25, latency_p95_ms=900.0)
    result = run_sensor(endpoint_drift_sensor, instance)
    (request,) = result.run_requests
    assert "error_rate 0.250" in request.tags["llmops/reason"]
    assert "latency_p95 grew 3.00x" in request.tags["llmops/reason"]
    assert request.tags["llmops/sensor"] == "endpoint_drift_sensor"
    # The same measurement never triggers twice.
    again = run_sensor(endpoint_drift_sensor, instance, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)


def test_degradation_reason_on_throughput_drop():
    reason = degradation_reason({**HEALTHY, "tokens_per_s": 10.0}, HEALTHY, DriftThresholds())
    assert reason == "tokens_per_s fell to 0.25x (limit 0.5x)"
    assert degradation_reason(HEALTHY, None, DriftThresholds()) is None


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
    assert isinstance(result, dg.SkipReason) and "answered 200" in result.skip_message


def test_health_sensor_redeploys_a_dead_endpoint(instance):
    dead = f"http://127.0.0.1:{free_port()}"
    record_endpoint(instance, dead)
    request = run_sensor(endpoint_health_sensor, instance)
    assert isinstance(request, dg.RunRequest)
    assert "unreachable" in request.tags["llmops/reason"] and request.run_key.startswith("redeploy-")


def test_health_sensor_is_quiet_before_any_deployment(instance):
    assert isinstance(run_sensor(endpoint_health_sensor, instance), dg.SkipReason)
