"""Sensors on the live endpoint: roll back a promoted version whose live metrics regressed, redeploy when the
endpoint stops answering."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import httpx

from jobs import redeploy_job, rollback_job
from sensors.monitoring import cooling_down, load_cursor, metadata_values

ENDPOINT_METRICS = dg.AssetKey("endpoint_metrics")
ENDPOINT = dg.AssetKey("endpoint")


@dataclass(frozen=True)
class RegressionThresholds:
    """How much worse than the previous promoted version's measurements the promoted version's may be."""

    max_error_rate_increase: float = 0.02
    max_p95_growth: float = 1.5
    min_tokens_per_s_ratio: float = 0.5
    min_requests: int = 10
    """Requests a measurement needs to count; an error rate of 0.5 or more counts at any size."""


def _number(meta: dict, key: str) -> float | None:
    value = meta.get(key)
    return None if value is None or math.isnan(float(value)) else float(value)


def regression_reason(current: dict, baseline: dict, limits: RegressionThresholds) -> str | None:
    """Why the current endpoint metrics are worse than the `baseline` ones, or None when they are within limits."""
    error, base_error = _number(current, "error_rate"), _number(baseline, "error_rate")
    if (_number(current, "requests") or 0) < limits.min_requests and (error or 0) < 0.5:
        return None
    reasons = []
    if error is not None and base_error is not None and error - base_error > limits.max_error_rate_increase:
        reasons.append(f"error_rate {error:.3f} vs {base_error:.3f} (limit +{limits.max_error_rate_increase})")
    p95, base_p95 = _number(current, "latency_p95_ms"), _number(baseline, "latency_p95_ms")
    if p95 is not None and base_p95 and p95 / base_p95 > limits.max_p95_growth:
        reasons.append(f"latency_p95_ms {p95:.0f} vs {base_p95:.0f}: {p95 / base_p95:.2f}x "
                       f"(limit {limits.max_p95_growth}x)")
    tps, base_tps = _number(current, "tokens_per_s"), _number(baseline, "tokens_per_s")
    if tps is not None and base_tps and tps / base_tps < limits.min_tokens_per_s_ratio:
        reasons.append(f"tokens_per_s {tps:.1f} vs {base_tps:.1f}: {tps / base_tps:.2f}x "
                       f"(limit {limits.min_tokens_per_s_ratio}x)")
    return "; ".join(reasons) or None


def sole_version(meta: dict) -> str | None:
    """The model version an endpoint_metrics measurement saw alone, or None when it saw several or none."""
    versions = meta.get("model_versions") or []
    return str(versions[0]) if len(versions) == 1 else None


def previous_baseline(earlier: list[dict], version: str, skip: list[str], last_n: int = 3) -> tuple[str | None, dict]:
    """The version that served alone before `version` (not one in `skip`) and the median of its last `last_n`
    measurements, from `earlier` measurements, newest first."""
    previous = next((v for v in map(sole_version, earlier) if v not in (None, version, *skip)), None)
    mine = [m for m in earlier if sole_version(m) == previous][:last_n]
    numbers = {k: [n for n in (_number(m, k) for m in mine) if n is not None]
               for k in ("error_rate", "latency_p95_ms", "tokens_per_s")}
    return previous, {k: statistics.median(v) for k, v in numbers.items() if v}


def make_live_regression_sensor(limits: RegressionThresholds = RegressionThresholds(), cooldown_s: float = 1800.0,
                                history: int = 200, minimum_interval_seconds: int = 60,
                                clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    @dg.sensor(name="live_regression_sensor", job=rollback_job, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.STOPPED)
    def live_regression_sensor(context: dg.SensorEvaluationContext):
        """Requests a rollback when a new `endpoint_metrics` measurement of the promoted version, serving alone,
        is worse than the previous promoted version's last measurements (endpoint_rollback decides and acts)."""
        # Versions it asked to roll back are never a baseline again, so a restored version cannot flap back.
        state = load_cursor(context.cursor)
        records = context.instance.fetch_materializations(ENDPOINT_METRICS, limit=history).records
        if not records or records[0].storage_id <= state.get("endpoint_metrics", 0):
            return dg.SkipReason("no new endpoint_metrics measurement")
        event, current = records[0].storage_id, metadata_values(records[0])
        consumed = json.dumps({**state, "endpoint_metrics": event})
        version = sole_version(current)
        if version is None:
            return dg.SensorResult(skip_reason=f"measurement {event} saw versions {current.get('model_versions')}, "
                                               f"not one version serving alone", cursor=consumed)
        previous, baseline = previous_baseline([metadata_values(r) for r in records[1:]], version,
                                               state.get("rolled_back", []))
        if previous is None:
            return dg.SensorResult(skip_reason=f"no earlier measurement of another version serving alone before "
                                               f"{version}", cursor=consumed)
        reason = regression_reason(current, baseline, limits)
        if reason is None:
            return dg.SensorResult(skip_reason=f"version {version} within limits against version {previous} "
                                               f"(event {event})", cursor=consumed)
        wait = cooling_down(state, cooldown_s, clock())
        if wait > 0:  # leave the event unconsumed: the newest one acts after the cool-down
            return dg.SkipReason(f"version {version} regressed against {previous}; cooling down {wait:.0f}s more")
        reason = f"version {version} against previous version {previous}: {reason}"
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"rollback-{event}", tags={
                "llmops/sensor": "live_regression_sensor", "llmops/reason": reason[:1000],
                "llmops/model_version": version, "llmops/rollback_to": previous,
                "llmops/endpoint_metrics_event": str(event)})],
            cursor=json.dumps({**state, "endpoint_metrics": event, "last_request_at": clock(),
                               "rolled_back": sorted({*state.get("rolled_back", []), version})}))

    return live_regression_sensor


def endpoint_is_healthy(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """GET `url`/health; returns (healthy, what was seen)."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s)
    except httpx.HTTPError as e:
        return False, f"{url}/health unreachable: {type(e).__name__}: {e}"
    if response.status_code != 200:
        return False, f"{url}/health answered {response.status_code}"
    return True, f"{url}/health answered 200"


@dg.sensor(job=redeploy_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def endpoint_health_sensor(context: dg.SensorEvaluationContext):
    """Redeploys the current model version when the deployed endpoint stops answering `/health`."""
    records = context.instance.fetch_materializations(ENDPOINT, limit=1).records
    if not records:
        return dg.SkipReason("nothing deployed yet")
    url = metadata_values(records[0])["url"]
    healthy, seen = endpoint_is_healthy(url)
    if healthy:
        return dg.SkipReason(seen)
    # One redeploy per deployment: a new `endpoint` materialization gets a new storage id.
    return dg.RunRequest(run_key=f"redeploy-{records[0].storage_id}",
                         tags={"llmops/sensor": "endpoint_health_sensor", "llmops/reason": seen})


live_regression_sensor = make_live_regression_sensor()
