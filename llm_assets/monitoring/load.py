"""Probe load: real chat requests to the gateway, for when there is no live traffic to measure.

The gateway logs these requests like any other, so `endpoint_metrics` measures them from the request
log; `summarize` is the client's own view of the same requests (p50/p95 latency, tokens/s, error rate).
Probe i sends the OpenAI `user` field `llmops-probe-<i>`, so the gateway's sticky splits put the same probes
on the same arms every time: a canary's probe count per arm is reproducible, not a coin toss per request.
`first_probe` numbers a later round on from an earlier one, so each round reaches new users.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import numpy as np

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


PROBE_USER = "llmops-probe-{}"


async def _probe(client: httpx.AsyncClient, sem: asyncio.Semaphore, url: str, model: str, prompt: str,
                 max_tokens: int, user: str) -> RequestRecord:
    async with sem:
        ts = datetime.now(timezone.utc)
        start = time.perf_counter()
        try:
            resp = await client.post(f"{url}/v1/chat/completions", json={
                "model": model, "max_tokens": max_tokens, "user": user,
                "messages": [{"role": "user", "content": prompt}]})
        except httpx.HTTPError as e:
            return RequestRecord(ts, (time.perf_counter() - start) * 1000, 0, 0, 0, repr(e)[:500])
        latency = (time.perf_counter() - start) * 1000
        if resp.status_code != 200:
            return RequestRecord(ts, latency, resp.status_code, 0, 0, resp.text[:500])
        usage = resp.json().get("usage") or {}
        return RequestRecord(ts, latency, 200, int(usage.get("prompt_tokens") or 0),
                             int(usage.get("completion_tokens") or 0), "")


async def _run(url: str, model: str, requests: int, concurrency: int, max_tokens: int, headers: dict,
               timeout: float, prompts: tuple[str, ...], first_probe: int) -> list[RequestRecord]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*[
            _probe(client, sem, url, model, prompts[i % len(prompts)], max_tokens, PROBE_USER.format(i))
            for i in range(first_probe, first_probe + requests)]))


def run_load(url: str, model: str, requests: int = 16, concurrency: int = 4, max_tokens: int = 16,
             api_key: str = "", timeout: float = 120.0,
             prompts: tuple[str, ...] = PROMPTS, first_probe: int = 0) -> tuple[list[RequestRecord], float]:
    """Send `requests` chat requests, `concurrency` at a time; returns the records and the wall time (s)."""
    if requests < 1 or concurrency < 1:
        raise ValueError(f"requests and concurrency must be >= 1, got {requests}, {concurrency}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.perf_counter()
    records = asyncio.run(_run(url.rstrip("/"), model, requests, concurrency, max_tokens, headers, timeout,
                               prompts, first_probe))
    return records, time.perf_counter() - start


def probes_logged(request_log) -> int:
    """How many probe requests a gateway request log (a DataFrame) holds: the `first_probe` of the next round."""
    if not len(request_log) or "user" not in request_log:
        return 0
    return int(request_log["user"].astype(str).str.startswith(PROBE_USER.format("")).sum())


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
