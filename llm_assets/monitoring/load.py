"""Probe a live endpoint with real chat requests, summarize them, and append them to a Delta table.

Each request becomes one row of `endpoint_metrics` (timestamp, model_version, latency_ms,
completion_tokens, status, ...); the summary (p50/p95 latency, tokens/s, error rate) is what the
monitoring sensors read from the asset's metadata. The gateway's own Prometheus counters are scraped
alongside, so the two views can be compared.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

TABLE = "endpoint_metrics"

PROMPTS = (
    "Hello! What can you do?",
    "What is a language model?",
    "Summarize the lifecycle of a model in one sentence.",
    "Name three things a data pipeline does.",
    "Write a short greeting.",
    "What does a tokenizer do?",
)


@dataclass(frozen=True)
class RequestRecord:
    """One probe request's outcome; status 0 means no HTTP answer (connection error or timeout)."""

    timestamp: datetime
    latency_ms: float
    status: int
    prompt_tokens: int
    completion_tokens: int
    error: str


async def _probe(client: httpx.AsyncClient, sem: asyncio.Semaphore, url: str, model: str, prompt: str,
                 max_tokens: int) -> RequestRecord:
    async with sem:
        ts = datetime.now(timezone.utc)
        start = time.perf_counter()
        try:
            resp = await client.post(f"{url}/v1/chat/completions", json={
                "model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]})
        except httpx.HTTPError as e:
            return RequestRecord(ts, (time.perf_counter() - start) * 1000, 0, 0, 0, repr(e)[:500])
        latency = (time.perf_counter() - start) * 1000
        if resp.status_code != 200:
            return RequestRecord(ts, latency, resp.status_code, 0, 0, resp.text[:500])
        usage = resp.json().get("usage") or {}
        return RequestRecord(ts, latency, 200, int(usage.get("prompt_tokens") or 0),
                             int(usage.get("completion_tokens") or 0), "")


async def _run(url: str, model: str, requests: int, concurrency: int, max_tokens: int, headers: dict,
               timeout: float, prompts: tuple[str, ...]) -> list[RequestRecord]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*[
            _probe(client, sem, url, model, prompts[i % len(prompts)], max_tokens) for i in range(requests)]))


def run_load(url: str, model: str, requests: int = 16, concurrency: int = 4, max_tokens: int = 16,
             api_key: str = "", timeout: float = 120.0,
             prompts: tuple[str, ...] = PROMPTS) -> tuple[list[RequestRecord], float]:
    """Send `requests` chat requests, `concurrency` at a time; returns the records and the wall time (s)."""
    if requests < 1 or concurrency < 1:
        raise ValueError(f"requests and concurrency must be >= 1, got {requests}, {concurrency}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.perf_counter()
    records = asyncio.run(_run(url.rstrip("/"), model, requests, concurrency, max_tokens, headers, timeout,
                               prompts))
    return records, time.perf_counter() - start


def summarize(records: list[RequestRecord], wall_s: float, model_version: str) -> dict:
    """The monitoring summary: latency percentiles over successful requests, throughput, error rate."""
    ok = [r for r in records if r.status == 200]
    latencies = np.array([r.latency_ms for r in ok], dtype=float)
    tokens = sum(r.completion_tokens for r in ok)
    return {
        "latency_p50_ms": float(np.percentile(latencies, 50)) if len(ok) else float("nan"),
        "latency_p95_ms": float(np.percentile(latencies, 95)) if len(ok) else float("nan"),
        "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "error_rate": (len(records) - len(ok)) / len(records) if records else 1.0,
        "requests": len(records),
        "model_version": model_version,
    }


def scrape_gateway_metrics(url: str, api_key: str = "", timeout: float = 10.0) -> dict[str, float]:
    """Totals from the gateway's /metrics: requests (all, errors), tokens, mean latency, backend up."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(f"{url.rstrip('/')}/metrics", headers=headers, timeout=timeout)
    resp.raise_for_status()
    out = {"gateway_requests_total": 0.0, "gateway_request_errors_total": 0.0,
           "gateway_generated_tokens_total": 0.0, "gateway_prompt_tokens_total": 0.0}
    latency_sum = latency_count = 0.0
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "gateway_requests_total":
                out["gateway_requests_total"] += s.value
                if s.labels.get("status") != "200":
                    out["gateway_request_errors_total"] += s.value
            elif s.name in ("gateway_generated_tokens_total", "gateway_prompt_tokens_total"):
                out[s.name] += s.value
            elif s.name == "gateway_request_latency_seconds_sum":
                latency_sum += s.value
            elif s.name == "gateway_request_latency_seconds_count":
                latency_count += s.value
            elif s.name == "gateway_backend_up":
                out["gateway_backend_up"] = s.value
    out["gateway_latency_mean_ms"] = 1000 * latency_sum / latency_count if latency_count else float("nan")
    return out


def records_dataframe(spark, records: list[RequestRecord], model_version: str, model: str, url: str,
                      batch_id: str):
    """One row per request, as a Spark DataFrame with an explicit schema."""
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("timestamp", T.TimestampType(), False),
        T.StructField("batch_id", T.StringType(), False),
        T.StructField("endpoint", T.StringType(), False),
        T.StructField("model", T.StringType(), False),
        T.StructField("model_version", T.StringType(), False),
        T.StructField("latency_ms", T.DoubleType(), False),
        T.StructField("prompt_tokens", T.IntegerType(), False),
        T.StructField("completion_tokens", T.IntegerType(), False),
        T.StructField("status", T.IntegerType(), False),
        T.StructField("error", T.StringType(), False),
    ])
    rows = [(r.timestamp, batch_id, url, model, model_version, float(r.latency_ms), r.prompt_tokens,
             r.completion_tokens, r.status, r.error) for r in records]
    return spark.createDataFrame(rows, schema).coalesce(1)


@dataclass(frozen=True)
class EndpointMetrics:
    summary: dict
    gateway: dict[str, float]
    records: list[RequestRecord]
    table_uri: str
    table_version: int
    batch_id: str


def collect_endpoint_metrics(url: str, model: str, model_version: str, spark, lakehouse, *, requests: int = 16,
                             concurrency: int = 4, max_tokens: int = 16, api_key: str = "",
                             timeout: float = 120.0) -> EndpointMetrics:
    """Probe the endpoint, append one row per request to the `endpoint_metrics` Delta table, summarize."""
    records, wall_s = run_load(url, model, requests, concurrency, max_tokens, api_key, timeout)
    batch_id = uuid.uuid4().hex[:12]
    df = records_dataframe(spark, records, model_version, model, url, batch_id)
    version = lakehouse.write(df, TABLE, f"{len(records)} probe requests to {model} v{model_version}",
                              mode="append", batch_id=batch_id)
    return EndpointMetrics(summarize(records, wall_s, model_version), scrape_gateway_metrics(url, api_key),
                           records, version.uri, version.version, batch_id)
