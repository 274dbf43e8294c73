"""Sensors on the live endpoint: retrain when its metrics degrade, redeploy when it stops answering."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
import httpx

from jobs import redeploy_job, retrain_job

ENDPOINT_METRICS = dg.AssetKey("endpoint_metrics")
ENDPOINT = dg.AssetKey("endpoint")


@dataclass(frozen=True)
class DriftThresholds:
    """When live metrics count as degraded. `max_p95_growth` compares with the previous measurement."""

    max_error_rate: float = 0.05
    max_latency_p95_ms: float = 30_000.0
    max_p95_growth: float = 2.0
    min_tokens_per_s_ratio: float = 0.5


def degradation_reason(current: dict, previous: dict | None, limits: DriftThresholds) -> str | None:
    """Why the current endpoint metrics call for retraining, or None when they are fine."""
    reasons = []
    if current["error_rate"] > limits.max_error_rate:
        reasons.append(f"error_rate {current['error_rate']:.3f} > {limits.max_error_rate}")
    if current["latency_p95_ms"] > limits.max_latency_p95_ms:
        reasons.append(f"latency_p95_ms {current['latency_p95_ms']:.0f} > {limits.max_latency_p95_ms:.0f}")
    if previous and previous.get("latency_p95_ms"):
        growth = current["latency_p95_ms"] / previous["latency_p95_ms"]
        if growth > limits.max_p95_growth:
            reasons.append(f"latency_p95 grew {growth:.2f}x (limit {limits.max_p95_growth}x)")
    if previous and previous.get("tokens_per_s"):
        ratio = current["tokens_per_s"] / previous["tokens_per_s"]
        if ratio < limits.min_tokens_per_s_ratio:
            reasons.append(f"tokens_per_s fell to {ratio:.2f}x (limit {limits.min_tokens_per_s_ratio}x)")
    return "; ".join(reasons) or None


def _metadata(record) -> dict:
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def endpoint_drift_sensor(context: dg.SensorEvaluationContext):
    """Requests a retrain when a new `endpoint_metrics` measurement shows degraded quality or drift."""
    records = context.instance.fetch_materializations(ENDPOINT_METRICS, limit=2).records
    if not records or str(records[0].storage_id) == context.cursor:
        return dg.SkipReason("no new endpoint_metrics measurement")
    current = _metadata(records[0])
    previous = _metadata(records[1]) if len(records) > 1 else None
    reason = degradation_reason(current, previous, DriftThresholds())
    cursor = str(records[0].storage_id)
    if reason is None:
        return dg.SensorResult(skip_reason=f"endpoint metrics within limits (event {cursor})", cursor=cursor)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"drift-{cursor}", tags={
            "llmops/sensor": "endpoint_drift_sensor", "llmops/reason": reason,
            "llmops/model_version": str(current.get("model_version", "")),
        })],
        cursor=cursor,
    )


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
    url = _metadata(records[0])["url"]
    healthy, seen = endpoint_is_healthy(url)
    if healthy:
        return dg.SkipReason(seen)
    # One redeploy per deployment: a new `endpoint` materialization gets a new storage id.
    return dg.RunRequest(run_key=f"redeploy-{records[0].storage_id}",
                         tags={"llmops/sensor": "endpoint_health_sensor", "llmops/reason": seen})
