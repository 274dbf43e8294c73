"""The llmops gateway: one OpenAI-compatible entry point in front of model-server replicas.

We route by hand rather than adopt LiteLLM's router: the goal of at most 2 ms overhead, splits that are
sticky per user across model versions *and* prompt versions, and a request log tied to both versions do
not fit its router, and litellm's dependency tree is large for what we use.

The routing state is a route table (JSON, `--routes PATH`, checked by `RouteTable.parse`):

    {"models": {"llmops-gpt": {"prompt": "assistant", "versions": {
        "3": {"weight": 0.9, "backend_model": "/abs/v3", "model_dir": "/abs/v3", "replicas": ["http://127.0.0.1:41001"]},
        "4": {"weight": 0.1, "backend_model": "/abs/v4", "model_dir": "/abs/v4", "replicas": ["http://127.0.0.1:41003"]}}}},
     "prompts": {"assistant": {"versions": {"1a2b3c": {"template": "You are a helpful assistant.", "weight": 1.0}}}}}

(`prompt`, `prompts`, `backend_model` and `model_dir` are optional; a missing `backend_model` is asked from
a replica's /v1/models; `model_dir` turns on the context-length guard). Per request the gateway

- picks the model entry by `model` (absent: the first), then a version, sticky per user: the key is the
  OpenAI `user` field, else the `x-llmops-session` header, else the request id, and
  `u = int(sha256(f"{model}:{key}")[:8], 16) / 2**32` picks by cumulative weight over the versions sorted
  by name (a version with no healthy replica is skipped: the same `u` picks among the others);
- applies the model's prompt (a version picked the same way, salt `prompt:{name}:{key}`) as the first
  system message of a chat request;
- sends it to the healthy replica with the fewest outstanding requests, and retries on another replica
  of that version after a connection error, timeout, 5xx or a garbage answer, as long as no byte has
  reached the client;
- appends one JSON line to `--request-log` and counts it in `/metrics` (by model, version, prompt version).

A background task checks every replica's `/health` each `--health-interval` seconds; one that fails,
times out or answers garbage is out of rotation until it passes again. `POST /v1/feedback` records a
rating for a logged request in `--feedback-log`. Admin endpoints (`GET|PUT /admin/routes`,
`POST|DELETE /admin/replicas`) need `Authorization: Bearer $LLMOPS_ADMIN_KEY`; without that variable
they answer 403. The client API key comes from `LLMOPS_API_KEY` (or `--api-key`); with a key set, /v1/*
needs `Authorization: Bearer <key>`. Bodies over `--max-body-bytes` get 413, `max_tokens` outside
1..`--max-tokens-limit` 400, and with a version's `model_dir` a prompt past the context window 400.
Errors have OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

    python -m llm_assets.deployment.gateway --routes run/routes.json --request-log run/logs/requests.jsonl \\
        --feedback-log run/logs/feedback.jsonl --host 127.0.0.1 --port 8000
    # shorthand for a one-version table (repeat --backend-url for replicas):
    python -m llm_assets.deployment.gateway --backend-url http://127.0.0.1:8001 \\
        --model-name llmops-gpt --model-version 3 --model-dir /abs/model/dir --port 8000

Layout follows vLLM's OpenAI layer: protocol (the error body), routes (the table), serving
(`GatewayService`, which owns the logic) and router (`create_app`, thin handlers on `app.state`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("llmops.gateway")

# ---------------------------------------------------------------- protocol


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorInfo


class GatewayError(Exception):
    """A request the gateway answers with an OpenAI-style error."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code))

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=headers)


def _error_type(status: int) -> str:
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            413: "invalid_request_error"}.get(status, "invalid_request_error" if status < 500 else "api_error")


def backend_error(status: int, content: bytes) -> GatewayError:
    """The backend's error as an OpenAI error (FastAPI backends answer `{"detail": ...}`)."""
    try:
        data = json.loads(content)
    except ValueError:
        data = content.decode(errors="replace")[:500]
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        return GatewayError(status, str(err.get("message", err)), err.get("type") or _error_type(status),
                            err.get("code"), err.get("param"))
    message = data.get("detail", data) if isinstance(data, dict) else data
    return GatewayError(status, f"backend: {message}", _error_type(status), "backend_error")


# ---------------------------------------------------------------- routes


class RouteError(ValueError):
    """A route table that cannot be served; the message names the field."""


@dataclass(eq=False)
class Replica:
    """One model server; its health and load are gateway state, kept across route-table changes."""

    url: str
    up: bool = True  # until the first health check says otherwise
    detail: str = "not checked yet"
    outstanding: int = 0
    last_pick: int = 0  # ties on outstanding go to the replica picked longest ago (round robin)


@dataclass
class Version:
    name: str
    weight: float
    backend_model: str | None
    model_dir: str | None
    replicas: list[Replica]

    def to_json(self) -> dict:
        return {"weight": self.weight, "backend_model": self.backend_model, "model_dir": self.model_dir,
                "replicas": [r.url for r in self.replicas]}


@dataclass
class ModelRoute:
    name: str
    prompt: str | None
    versions: dict[str, Version]  # sorted by name: the order the sticky split walks

    def stable(self) -> Version:
        """The version with the largest weight (ties: the latest name)."""
        return max(self.versions.values(), key=lambda v: (v.weight, v.name))


@dataclass
class PromptVersion:
    name: str
    template: str
    weight: float


@dataclass
class RouteTable:
    models: dict[str, ModelRoute]
    prompts: dict[str, dict[str, PromptVersion]]

    def to_json(self) -> dict:
        return {
            "models": {m.name: {**({"prompt": m.prompt} if m.prompt else {}),
                                "versions": {v.name: v.to_json() for v in m.versions.values()}}
                       for m in self.models.values()},
            "prompts": {name: {"versions": {p.name: {"template": p.template, "weight": p.weight}
                                            for p in versions.values()}}
                        for name, versions in self.prompts.items()},
        }

    def replicas(self) -> list[tuple[str, str, Replica]]:
        return [(m.name, v.name, r) for m in self.models.values() for v in m.versions.values() for r in v.replicas]

    @classmethod
    def parse(cls, data: object, previous: RouteTable | None = None) -> RouteTable:
        """Validate a route table's JSON; replicas already in `previous` keep their health and load."""
        known = {(m, v, r.url): r for m, v, r in previous.replicas()} if previous else {}
        _expect(isinstance(data, dict), "routes", "must be a JSON object")
        _expect(not set(data) - {"models", "prompts"}, "routes", f"unknown keys {sorted(set(data) - {'models', 'prompts'})}")
        prompts: dict[str, dict[str, PromptVersion]] = {}
        raw_prompts = data.get("prompts") or {}
        _expect(isinstance(raw_prompts, dict), "routes.prompts", "must be an object")
        for pname, entry in raw_prompts.items():
            where = f"routes.prompts.{pname}"
            _expect(isinstance(entry, dict) and isinstance(entry.get("versions"), dict) and entry["versions"],
                    where, "must be an object with a non-empty 'versions' object")
            versions = {}
            for vname, pv in sorted(entry["versions"].items()):
                _expect(isinstance(pv, dict) and isinstance(pv.get("template"), str), f"{where}.versions.{vname}",
                        "must be an object with a 'template' string")
                versions[vname] = PromptVersion(vname, pv["template"], _weight(pv, f"{where}.versions.{vname}"))
            _expect(any(p.weight > 0 for p in versions.values()), where, "needs a version with weight > 0")
            prompts[pname] = versions
        models: dict[str, ModelRoute] = {}
        raw_models = data.get("models")
        _expect(isinstance(raw_models, dict) and raw_models, "routes.models", "must be a non-empty object")
        for mname, entry in raw_models.items():
            where = f"routes.models.{mname}"
            _expect(isinstance(entry, dict) and isinstance(entry.get("versions"), dict) and entry["versions"],
                    where, "must be an object with a non-empty 'versions' object")
            prompt = entry.get("prompt") or None
            _expect(prompt is None or prompt in prompts, f"{where}.prompt", f"names no entry of routes.prompts: {prompt!r}")
            versions = {}
            for vname, v in sorted(entry["versions"].items()):
                vwhere = f"{where}.versions.{vname}"
                _expect(isinstance(v, dict), vwhere, "must be an object")
                urls = v.get("replicas")
                _expect(isinstance(urls, list) and urls and all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                                               for u in urls),
                        f"{vwhere}.replicas", "must be a non-empty list of http(s) URLs")
                urls = [u.rstrip("/") for u in urls]
                _expect(len(set(urls)) == len(urls), f"{vwhere}.replicas", "lists a URL twice")
                for key in ("backend_model", "model_dir"):
                    _expect(v.get(key) is None or isinstance(v[key], str), f"{vwhere}.{key}", "must be a string")
                versions[vname] = Version(vname, _weight(v, vwhere), v.get("backend_model") or None,
                                          v.get("model_dir") or None,
                                          [known.get((mname, vname, u)) or Replica(u) for u in urls])
            _expect(any(v.weight > 0 for v in versions.values()), where, "needs a version with weight > 0")
            models[mname] = ModelRoute(mname, prompt, versions)
        return cls(models, prompts)


def _expect(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise RouteError(f"{where} {problem}")


def _weight(entry: dict, where: str) -> float:
    w = entry.get("weight", 1.0)
    _expect(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0, f"{where}.weight",
            f"must be a number >= 0, got {w!r}")
    return float(w)


def sticky_fraction(salt: str) -> float:
    """A number in [0, 1) fixed by `salt`: the same user lands on the same side of every split."""
    return int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16) / 2**32


def pick_weighted(items: list[tuple[str, float]], u: float) -> str:
    """The name whose cumulative-weight interval holds `u` (weights need not sum to 1)."""
    items = [(n, w) for n, w in items if w > 0]
    total = sum(w for _, w in items)
    acc = 0.0
    for name, w in items:
        acc += w / total
        if u < acc:
            return name
    return items[-1][0]


def choose_version(route: ModelRoute, key: str) -> Version:
    """The sticky version for `key`; if it has no healthy replica, the same draw among versions that do."""
    u = sticky_fraction(f"{route.name}:{key}")
    chosen = route.versions[pick_weighted([(v.name, v.weight) for v in route.versions.values()], u)]
    if not any(r.up for r in chosen.replicas):
        alive = [(v.name, v.weight) for v in route.versions.values() if v.weight > 0 and any(r.up for r in v.replicas)]
        if alive:
            chosen = route.versions[pick_weighted(alive, u)]
    return chosen


def choose_prompt(versions: dict[str, PromptVersion], prompt_name: str, key: str) -> PromptVersion:
    u = sticky_fraction(f"prompt:{prompt_name}:{key}")
    return versions[pick_weighted([(p.name, p.weight) for p in versions.values()], u)]


_picks = itertools.count(1)


def pick_replica(version: Version, tried: list[Replica]) -> Replica | None:
    """Least outstanding requests over the healthy, untried replicas; untried unhealthy ones as a last resort."""
    fresh = [r for r in version.replicas if r not in tried]
    pool = [r for r in fresh if r.up] or fresh
    if not pool:
        return None
    replica = min(pool, key=lambda r: (r.outstanding, r.last_pick))
    replica.last_pick = next(_picks)
    return replica


def single_backend_routes(backend_urls: list[str], model_name: str, backend_model: str | None = None,
                          model_version: str = "", model_dir: str | None = None) -> dict:
    """The route table of the single-backend command line: one model, one version, these replicas."""
    return {"models": {model_name: {"versions": {model_version or "0": {
        "weight": 1.0, "backend_model": backend_model, "model_dir": model_dir, "replicas": backend_urls}}}},
        "prompts": {}}


# ---------------------------------------------------------------- serving

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUIRED_FIELDS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}
LOG_CHARS = 2000
INLINE_GUARD_BYTES = 16_384  # bigger bodies are tokenized in a thread, off the event loop


class GatewayMetrics:
    """The gateway's Prometheus series, in a registry of its own."""

    def __init__(self, service: GatewayService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Requests answered, by endpoint, HTTP status and versions",
                                ["endpoint", "status", "model", "version", "prompt_version"], registry=self.registry)
        self.latency = Histogram("gateway_request_latency_seconds", "Time to the last byte of the answer",
                                 ["endpoint", "model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("gateway_time_to_first_token_seconds",
                              "Time to the first answer byte sent to the client (streams: first token)",
                              ["endpoint", "model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.completion_tokens = Counter("gateway_generated_tokens", "Completion tokens generated",
                                         ["endpoint", "model", "version"], registry=self.registry)
        self.prompt_tokens = Counter("gateway_prompt_tokens", "Prompt tokens processed",
                                     ["endpoint", "model", "version"], registry=self.registry)
        self.retries = Counter("gateway_replica_failures", "Attempts that failed on a replica (then retried)",
                               ["model", "version", "replica"], registry=self.registry)
        self.backend_up = Gauge("gateway_backend_up", "1 when at least one replica passed its last health check",
                                registry=self.registry)
        self.registry.register(_ReplicaCollector(service))
        self._per_version: dict[tuple[str, str, str], tuple] = {}

    def per_version(self, endpoint: str, model: str, version: str) -> tuple:
        """The (latency, ttft, completion tokens, prompt tokens) series of one endpoint and version.

        Cached: each labels() call checks the labels and takes a lock, a cost on every request.
        """
        key = (endpoint, model, version)
        series = self._per_version.get(key)
        if series is None:
            series = self._per_version[key] = tuple(
                m.labels(*key) for m in (self.latency, self.ttft, self.completion_tokens, self.prompt_tokens))
        return series


class _ReplicaCollector:
    """Per-replica gauges read from the live route table at scrape time (removed replicas disappear)."""

    def __init__(self, service: GatewayService):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        outstanding = GaugeMetricFamily("gateway_outstanding_requests", "Requests in flight on a replica",
                                        labels=["model", "version", "replica"])
        up = GaugeMetricFamily("gateway_replica_up", "1 while a replica is in rotation",
                               labels=["model", "version", "replica"])
        for model, version, r in self.service.table.replicas():
            outstanding.add_metric([model, version, r.url], r.outstanding)
            up.add_metric([model, version, r.url], 1 if r.up else 0)
        yield outstanding
        yield up


class ContextGuard:
    """Rejects requests that would run past the model's context window, before they reach the backend.

    Why: `transformers serve --continuous-batching` crashes its batching worker on a position index past
    `n_positions` and then answers 503 to every later request. The prompt is counted with the model's
    own tokenizer and chat template; a missing `max_tokens` is set to the room left (OpenAI's default).
    """

    def __init__(self, model_dir: str):
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # A fast tokenizer's Rust backend counts the same ids in a fifth of the time of tokenizer(text).
        self.backend = getattr(self.tokenizer, "backend_tokenizer", None)
        config = AutoConfig.from_pretrained(model_dir)
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def count(self, text: str, add_special_tokens: bool) -> int:
        if self.backend is not None:
            return len(self.backend.encode(text, add_special_tokens=add_special_tokens))
        return len(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def prompt_tokens(self, path: str, body: dict) -> int:
        try:
            if path == "/v1/chat/completions":
                # What apply_chat_template(tokenize=True) does: render, then tokenize with no special tokens added.
                text = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
                return self.count(text, add_special_tokens=False)
            prompt = body["prompt"]
            prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
            return max(len(p) if isinstance(p, list) else self.count(str(p), add_special_tokens=True) for p in prompts)
        except (TypeError, ValueError, KeyError, AttributeError, jinja2.TemplateError) as e:
            field_ = REQUIRED_FIELDS[path]
            raise GatewayError(400, f"'{field_}' cannot be tokenized: {e}", param=field_, code="invalid_value") from e

    def check(self, path: str, body: dict) -> None:
        if not self.context:
            return
        n = self.prompt_tokens(path, body)
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        requested = body.get(key)
        if requested is None:
            body[key] = requested = self.context - n
        if not isinstance(requested, int) or requested < 1 or n + requested > self.context:
            raise GatewayError(
                400, f"This model's maximum context length is {self.context} tokens. However, you requested "
                     f"{n + (requested if isinstance(requested, int) else 0)} tokens ({n} in the prompt, "
                     f"{requested} in the completion). Please reduce the prompt or the completion length.",
                param=REQUIRED_FIELDS[path], code="context_length_exceeded")


class JsonLines:
    """An append-only JSON-lines file (request log, feedback log)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class Call:
    """One completion request on its way through the gateway: what the request log records."""

    request_id: str
    endpoint: str
    start: float
    model: str = ""
    model_version: str = ""
    prompt_name: str = ""
    prompt_version: str = ""
    user: str = ""
    replica: str = ""
    retries: int = 0
    stream: bool = False
    prompt: str = ""
    response: list[str] = field(default_factory=list)
    ttft: float | None = None
    usage: dict | None = None

    def headers(self) -> dict[str, str]:
        h = {"x-llmops-request-id": self.request_id}
        if self.model_version:
            h["x-llmops-model-version"] = self.model_version
        if self.prompt_version:
            h["x-llmops-prompt-version"] = self.prompt_version
        return h

    def add_text(self, text: str) -> None:
        if text and sum(map(len, self.response)) < LOG_CHARS:
            self.response.append(text)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _prompt_text(path: str, body: dict) -> str:
    """The last user message, or the completion prompt, for the request log."""
    if path == "/v1/chat/completions":
        for m in reversed(body.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):
                    c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
                return str(c or "")[:LOG_CHARS]
        return ""
    p = body.get("prompt")
    return str(p[0] if isinstance(p, list) and p else p or "")[:LOG_CHARS]


def _chunk_text(choice: dict) -> str:
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def _answer_text(data: dict) -> str:
    choice = (data.get("choices") or [{}])[0]
    return ((choice.get("message") or {}).get("content") or choice.get("text") or "") if isinstance(choice, dict) else ""


class RetryableFailure(Exception):
    """A replica failed before any byte reached the client: try another one."""

    def __init__(self, error: GatewayError, mark_down: bool):
        super().__init__(error.message)
        self.error = error
        self.mark_down = mark_down


# What a dead, hung or broken replica raises (aiohttp's timeouts are TimeoutErrors too).
UPSTREAM_ERRORS = (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError, asyncio.TimeoutError)
JSON_HEADERS = {"content-type": "application/json"}


def _replica_failure(replica: Replica, e: BaseException, what: str) -> RetryableFailure:
    """A connection error takes the replica out of rotation; a timeout (busy, maybe) does not."""
    return RetryableFailure(GatewayError(502, f"replica {replica.url} {what}: {e!r}", "api_error", "backend_unavailable"),
                            mark_down=not isinstance(e, asyncio.TimeoutError))


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The response body's lines without their line ends (SSE events end with an empty line)."""
    async for raw in resp.content:
        yield raw.decode(errors="replace").rstrip("\r\n")


class GatewayService:
    """Routes OpenAI requests over the route table's replicas, measures them and logs them."""

    def __init__(self, table: RouteTable, *, routes_path: str | Path | None = None, api_key: str = "",
                 admin_key: str = "", timeout: float = 300.0, request_log: str | Path | None = None,
                 feedback_log: str | Path | None = None, health_interval: float = 2.0, health_timeout: float = 5.0,
                 max_body_bytes: int = 1_000_000, max_tokens_limit: int = 4096):
        self.table = table
        self.routes_path = Path(routes_path) if routes_path else None
        self.api_key = api_key
        self.admin_key = admin_key
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.max_body_bytes = max_body_bytes
        self.max_tokens_limit = max_tokens_limit
        self.created = int(time.time())
        self.guards: dict[str, ContextGuard] = {}
        self.load_guards(table)
        self.metrics = GatewayMetrics(self)
        self.request_log = JsonLines(request_log) if request_log else None
        self.feedback_log = JsonLines(feedback_log) if feedback_log else None
        self.recent: OrderedDict[str, dict] = OrderedDict()  # request id -> versions, for feedback
        self.admin_lock = asyncio.Lock()
        # `timeout` bounds each wait (connecting, each read), not the whole request: streams may run longer.
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=5.0, sock_read=timeout)
        self.client: aiohttp.ClientSession | None = None  # opened in start(): it needs the running loop

    async def start(self) -> None:
        """Open the upstream connection pool (aiohttp: about half of httpx's per-request cost here)."""
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends, so none is reused as the
        # backend closes it. read_bufsize: SSE lines up to 2 MiB.
        self.client = aiohttp.ClientSession(
            timeout=self.timeout, read_bufsize=2**20,
            connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=4.0))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        for f in (self.request_log, self.feedback_log):
            if f:
                f.close()

    def load_guards(self, table: RouteTable) -> None:
        """A ContextGuard for every model_dir in `table` (loads tokenizers: blocking)."""
        for model in table.models.values():
            for v in model.versions.values():
                if v.model_dir and v.model_dir not in self.guards:
                    try:
                        self.guards[v.model_dir] = ContextGuard(v.model_dir)
                    except (OSError, ValueError) as e:
                        raise RouteError(f"routes.models.{model.name}.versions.{v.name}.model_dir "
                                         f"{v.model_dir!r} has no loadable tokenizer/config: {e}") from e

    # ---- auth

    def authorize(self, authorization: str | None) -> None:
        if self.api_key and not _token_matches(authorization, self.api_key):
            raise GatewayError(401, "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                               "authentication_error", "invalid_api_key")

    def authorize_admin(self, authorization: str | None) -> None:
        if not self.admin_key:
            raise GatewayError(403, "Admin endpoints are disabled: start the gateway with LLMOPS_ADMIN_KEY set.",
                               "permission_error", "admin_disabled")
        if not _token_matches(authorization, self.admin_key):
            raise GatewayError(401, "Missing or wrong admin key (send 'Authorization: Bearer $LLMOPS_ADMIN_KEY').",
                               "authentication_error", "invalid_admin_key")

    # ---- requests

    async def read_body(self, request: Request) -> bytes:
        """The body, or 413 past `max_body_bytes` (the rest is drained so the client reads the answer)."""
        limit = self.max_body_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > 64 * limit:
                break
        if size > limit:
            raise GatewayError(413, f"Request body is {size}{'+' if size > 64 * limit else ''} bytes; this gateway "
                                    f"accepts at most {limit}.", code="request_too_large")
        return b"".join(chunks)

    def parse(self, path: str, raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise GatewayError(400, f"Request body is not valid JSON: {e}", code="invalid_json") from e
        if not isinstance(body, dict):
            raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
        field_ = REQUIRED_FIELDS[path]
        value = body.get(field_)
        if not value:
            raise GatewayError(400, f"'{field_}' is required and must not be empty.", param=field_,
                               code="missing_required_parameter")
        if not isinstance(value, list) and not (field_ == "prompt" and isinstance(value, str)):
            raise GatewayError(400, f"'{field_}' must be a {'list of messages' if field_ == 'messages' else 'string or list'}, "
                                    f"got {type(value).__name__}.", param=field_, code="invalid_type")
        for key in ("max_tokens", "max_completion_tokens"):
            n = body.get(key)
            if n is None:
                continue
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise GatewayError(400, f"'{key}' must be a positive integer, got {n!r}.", param=key,
                                   code="invalid_value")
            if n > self.max_tokens_limit:
                raise GatewayError(400, f"'{key}' is {n}; this gateway allows at most {self.max_tokens_limit}.",
                                   param=key, code="invalid_value")
        for key, kind in (("user", str), ("stream", bool)):
            if body.get(key) is not None and not isinstance(body[key], kind):
                raise GatewayError(400, f"'{key}' must be a {kind.__name__}, got {body[key]!r}.", param=key,
                                   code="invalid_type")
        return body

    def route_for(self, requested: object) -> ModelRoute:
        table = self.table
        if requested in (None, ""):
            return next(iter(table.models.values()))
        if isinstance(requested, str):
            if requested in table.models:
                return table.models[requested]
            for m in table.models.values():  # the backend's own id is accepted too
                if any(v.backend_model == requested for v in m.versions.values()):
                    return m
        raise GatewayError(404, f"The model '{requested}' does not exist; this endpoint serves "
                                f"{', '.join(repr(m) for m in table.models)}.", param="model", code="model_not_found")

    async def handle(self, path: str, request: Request) -> Response:
        """One completion request: check, route, forward with retries; logged and measured when it ends."""
        call = Call(f"req-{uuid.uuid4().hex}", path, time.perf_counter())
        try:
            self.authorize(request.headers.get("authorization"))
            body = self.parse(path, await self.read_body(request))
            route = self.route_for(body.get("model"))
            call.model, call.stream, call.user = route.name, bool(body.get("stream")), body.get("user") or ""
            key = call.user or request.headers.get("x-llmops-session") or call.request_id
            version = choose_version(route, key)
            call.model_version = version.name
            if route.prompt and path == "/v1/chat/completions":
                pv = choose_prompt(self.table.prompts[route.prompt], route.prompt, key)
                call.prompt_name, call.prompt_version = route.prompt, pv.name
                body["messages"] = [{"role": "system", "content": pv.template}, *body["messages"]]
            call.prompt = _prompt_text(path, body)
            guard = self.guards.get(version.model_dir) if version.model_dir else None
            if guard is not None:
                if len(call.prompt) < INLINE_GUARD_BYTES:
                    guard.check(path, body)
                else:
                    await run_in_threadpool(guard.check, path, body)
            body["model"] = await self.backend_model(version)
            payload = json.dumps(body).encode()
            return await self.send(call, version, payload)
        except GatewayError as e:
            self.finish(call, e.status, e.message)
            return e.response(call.headers())

    async def backend_model(self, version: Version) -> str:
        """The backend's model id: from the route table, else the first one a replica lists."""
        if version.backend_model is None:
            errors = []
            for r in version.replicas:
                try:
                    async with self.client.get(f"{r.url}/v1/models", timeout=aiohttp.ClientTimeout(total=10.0),
                                               raise_for_status=True) as resp:
                        version.backend_model = json.loads(await resp.read())["data"][0]["id"]
                    break
                except (*UPSTREAM_ERRORS, KeyError, IndexError, ValueError, TypeError) as e:
                    errors.append(f"{r.url}: {e!r}")
            else:
                raise GatewayError(502, f"cannot list the backend's models: {'; '.join(errors)}", "api_error",
                                   "backend_unavailable")
        return version.backend_model

    async def send(self, call: Call, version: Version, payload: bytes) -> Response:
        """Try replicas of `version` until one answers; a failure after the first byte is not retried."""
        tried: list[Replica] = []
        last: GatewayError | None = None
        while (replica := pick_replica(version, tried)) is not None:
            tried.append(replica)
            call.replica = replica.url
            try:
                if call.stream:
                    return await self._stream(call, replica, payload)
                return await self._once(call, replica, payload)
            except RetryableFailure as f:
                last = f.error
                call.retries += 1
                self.metrics.retries.labels(call.model, call.model_version, replica.url).inc()
                if f.mark_down and replica.up:
                    replica.up, replica.detail = False, f"request failed: {f.error.message[:200]}"
                    log.warning("replica %s (%s v%s) out of rotation: %s", replica.url, call.model,
                                call.model_version, replica.detail)
        call.retries = max(0, call.retries - 1)  # the last failure was not followed by a retry
        if last is not None and last.status >= 500 and last.body.error.code != "backend_unavailable":
            raise last
        raise GatewayError(502, f"all {len(tried)} replica(s) of {call.model} version {call.model_version} failed; "
                                f"last error: {last.message if last else 'none'}", "api_error", "backend_unavailable")

    async def _once(self, call: Call, replica: Replica, payload: bytes) -> Response:
        replica.outstanding += 1
        try:
            async with self.client.post(f"{replica.url}{call.endpoint}", data=payload, headers=JSON_HEADERS) as resp:
                status, content = resp.status, await resp.read()
        except UPSTREAM_ERRORS as e:
            raise _replica_failure(replica, e, "failed") from e
        finally:
            replica.outstanding -= 1
        if status >= 500:
            raise RetryableFailure(backend_error(status, content), mark_down=False)
        if status != 200:
            raise backend_error(status, content)
        try:
            data = json.loads(content)
            ok = isinstance(data, dict) and isinstance(data.get("choices"), list)
        except ValueError:
            ok = False
        if not ok:
            text = content.decode(errors="replace")[:200]
            raise RetryableFailure(GatewayError(502, f"replica {replica.url} answered garbage: {text!r}",
                                                "api_error", "backend_unavailable"), mark_down=True)
        data["model"] = call.model
        call.usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        call.add_text(_answer_text(data))
        call.ttft = time.perf_counter() - call.start
        self.finish(call, 200)
        return JSONResponse(data, headers=call.headers())

    async def _stream(self, call: Call, replica: Replica, payload: bytes) -> Response:
        replica.outstanding += 1
        resp = None
        try:
            resp = await self.client.post(f"{replica.url}{call.endpoint}", data=payload, headers=JSON_HEADERS)
            if resp.status != 200:
                content = await resp.read()
                error = backend_error(resp.status, content)
                if resp.status >= 500:
                    raise RetryableFailure(error, mark_down=False)
                raise error
            # Read up to the first event before answering: until then a failure can still be retried.
            lines = _lines(resp)
            head: list[str] = []
            async for line in lines:
                head.append(line)
                if line.startswith("data:"):
                    break
        except UPSTREAM_ERRORS as e:
            replica.outstanding -= 1
            if resp is not None:
                resp.close()
            raise _replica_failure(replica, e, "failed") from e
        except BaseException:
            replica.outstanding -= 1
            if resp is not None:
                resp.close()
            raise
        return StreamingResponse(self._relay(call, replica, resp, lines, head), media_type="text/event-stream",
                                 headers=call.headers())

    async def _relay(self, call: Call, replica: Replica, resp: aiohttp.ClientResponse, lines: AsyncIterator[str],
                     head: list[str]) -> AsyncIterator[str]:
        status, error, chunks = 200, "", 0
        try:
            for line in head:
                line, n = self._rewrite(call, line)
                chunks += n
                yield line
            async for line in lines:
                line, n = self._rewrite(call, line)
                chunks += n
                yield line
        except UPSTREAM_ERRORS as e:
            status, error = 502, f"replica {replica.url} failed mid-stream: {e!r}"
            err = GatewayError(502, error, "api_error", "backend_unavailable")
            yield f"data: {json.dumps(err.body.model_dump())}\n\n"
        finally:
            replica.outstanding -= 1
            resp.close()  # a stream read to its end goes back to the pool; a cut one is dropped
            # Without a usage record, count content chunks: one token each on these backends.
            call.usage = call.usage or {"completion_tokens": chunks}
            self.finish(call, status, error)

    def _rewrite(self, call: Call, line: str) -> tuple[str, int]:
        """An SSE line with the public model name; counts and records its text."""
        if not line.startswith("data: ") or line == "data: [DONE]":
            return line + "\n", 0
        try:
            event = json.loads(line[6:])
        except ValueError:
            return line + "\n", 0
        if not isinstance(event, dict):
            return line + "\n", 0
        event["model"] = call.model
        if isinstance(event.get("usage"), dict):
            call.usage = event["usage"]
        text = "".join(_chunk_text(c) for c in event.get("choices") or [] if isinstance(c, dict))
        if text:
            if call.ttft is None:
                call.ttft = time.perf_counter() - call.start
            call.add_text(text)
        return "data: " + json.dumps(event, separators=(",", ":")) + "\n", int(bool(text))

    def finish(self, call: Call, status: int, error: str = "") -> None:
        """Count the finished request in /metrics and append it to the request log."""
        seconds = time.perf_counter() - call.start
        self.metrics.requests.labels(call.endpoint, str(status), call.model, call.model_version,
                                     call.prompt_version).inc()
        latency, ttft, completion_tokens, prompt_tokens = self.metrics.per_version(call.endpoint, call.model,
                                                                                  call.model_version)
        latency.observe(seconds)
        usage = call.usage or {}
        if status == 200:
            if call.ttft is not None:
                ttft.observe(call.ttft)
            completion_tokens.inc(int(usage.get("completion_tokens") or 0))
            prompt_tokens.inc(int(usage.get("prompt_tokens") or 0))
        versions = {"model": call.model, "model_version": call.model_version, "prompt_version": call.prompt_version}
        self.recent[call.request_id] = versions
        if len(self.recent) > 100_000:
            self.recent.popitem(last=False)
        if self.request_log is not None:
            self.request_log.append({
                "request_id": call.request_id, "timestamp": _utc_now(), "endpoint": call.endpoint,
                "model": call.model, "model_version": call.model_version, "prompt_name": call.prompt_name,
                "prompt_version": call.prompt_version, "user": call.user, "replica": call.replica,
                "status": status, "latency_ms": round(1000 * seconds, 3),
                "ttft_ms": round(1000 * call.ttft, 3) if call.ttft is not None else None,
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0), "retries": call.retries,
                "stream": call.stream, "error": error, "prompt": call.prompt,
                "response": "".join(call.response)[:LOG_CHARS]})

    # ---- feedback

    async def feedback(self, raw: bytes) -> dict:
        """Validate a feedback record, tie it to its request's versions, append it to the feedback log."""
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise GatewayError(400, f"Feedback body is not valid JSON: {e}", code="invalid_json") from e
        if not isinstance(body, dict):
            raise GatewayError(400, "Feedback body must be a JSON object.", code="invalid_json")
        unknown = sorted(set(body) - {"request_id", "rating", "thumbs", "comment"})
        if unknown:
            raise GatewayError(400, f"Unknown feedback field(s) {unknown}; allowed: request_id, rating, thumbs, "
                                    f"comment.", param=unknown[0], code="invalid_value")
        rid, rating, thumbs, comment = (body.get(k) for k in ("request_id", "rating", "thumbs", "comment"))
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            raise GatewayError(400, "'request_id' is required: the x-llmops-request-id of a completion.",
                               param="request_id", code="invalid_value")
        if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5):
            raise GatewayError(400, f"'rating' must be an integer from 1 to 5, got {rating!r}.", param="rating",
                               code="invalid_value")
        if thumbs is not None and thumbs not in ("up", "down"):
            raise GatewayError(400, f"'thumbs' must be 'up' or 'down', got {thumbs!r}.", param="thumbs",
                               code="invalid_value")
        if rating is None and thumbs is None:
            raise GatewayError(400, "Feedback needs 'rating' (1-5) or 'thumbs' ('up'/'down').", param="rating",
                               code="missing_required_parameter")
        if comment is not None and (not isinstance(comment, str) or len(comment) > LOG_CHARS):
            raise GatewayError(400, f"'comment' must be a string of at most {LOG_CHARS} characters.",
                               param="comment", code="invalid_value")
        versions = self.recent.get(rid)
        if versions is None and self.request_log is not None:
            versions = await run_in_threadpool(_find_request, self.request_log.path, rid)
        if versions is None:
            raise GatewayError(404, f"No request with id {rid!r} is known to this gateway.", param="request_id",
                               code="request_not_found")
        if self.feedback_log is None:
            raise GatewayError(503, "This gateway records no feedback (start it with --feedback-log).", "api_error",
                               "feedback_disabled")
        record = {"timestamp": _utc_now(), "request_id": rid, "rating": rating, "thumbs": thumbs,
                  "comment": comment or "", **versions}
        self.feedback_log.append(record)
        return record

    # ---- health

    async def check(self, replica: Replica) -> None:
        """One health check: 200 with an empty body (vLLM) or a JSON object that does not say unhealthy."""
        try:
            async with self.client.get(f"{replica.url}/health",
                                       timeout=aiohttp.ClientTimeout(total=self.health_timeout)) as resp:
                ok, detail = _health_verdict(resp.status, await resp.read())
        except UPSTREAM_ERRORS as e:
            ok, detail = False, repr(e)
        if ok != replica.up:
            log.warning("replica %s %s rotation: %s", replica.url, "back in" if ok else "out of", detail)
        replica.up, replica.detail = ok, detail

    async def check_all(self) -> bool:
        replicas = [r for _, _, r in self.table.replicas()]
        await asyncio.gather(*(self.check(r) for r in replicas))
        up = any(r.up for r in replicas)
        self.metrics.backend_up.set(1 if up else 0)
        return up

    async def health_loop(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.health_interval)

    def health_body(self, up: bool) -> dict:
        first = next(iter(self.table.models.values()))
        return {"status": "ok" if up else "unavailable", "model": first.name, "model_version": first.stable().name,
                "replicas": {m: {v: {r.url: {"up": r.up, "outstanding": r.outstanding, "detail": r.detail}
                                     for r in ver.replicas} for v, ver in route.versions.items()}
                             for m, route in self.table.models.items()}}

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": m.name, "object": "model", "created": self.created, "owned_by": "llmops",
            "root": m.stable().backend_model, "version": m.stable().name,
            "versions": {v.name: v.weight for v in m.versions.values()}} for m in self.table.models.values()]}

    # ---- admin

    async def put_routes(self, data: object) -> dict:
        """Validate, persist (to the routes file) and apply a new route table."""
        async with self.admin_lock:
            try:
                table = RouteTable.parse(data, previous=self.table)
                await run_in_threadpool(self.load_guards, table)
            except RouteError as e:
                raise GatewayError(400, str(e), code="invalid_routes") from e
            if self.routes_path is not None:
                tmp = self.routes_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(table.to_json(), indent=2))
                tmp.replace(self.routes_path)
            self.table = table
            return table.to_json()

    async def change_replica(self, raw: bytes, add: bool) -> dict:
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise GatewayError(400, f"Body is not valid JSON: {e}", code="invalid_json") from e
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body[k] for k in ("model", "version", "url")):
            raise GatewayError(400, "Body must be {\"model\", \"version\", \"url\"} (strings).", code="invalid_value")
        model, version, url = body["model"], body["version"], body["url"].rstrip("/")
        data = self.table.to_json()
        entry = data["models"].get(model, {}).get("versions", {}).get(version)
        if entry is None:
            raise GatewayError(404, f"No version {version!r} of model {model!r} in the route table.",
                               code="version_not_found")
        if add:
            if url in entry["replicas"]:
                raise GatewayError(409, f"{url} already serves {model} version {version}.", code="replica_exists")
            entry["replicas"].append(url)
            return await self.put_routes(data)
        if url not in entry["replicas"]:
            raise GatewayError(404, f"{url} is not a replica of {model} version {version}.", code="replica_not_found")
        if len(entry["replicas"]) == 1:
            raise GatewayError(409, f"{url} is the last replica of {model} version {version}; remove the version "
                                    f"with PUT /admin/routes instead.", code="last_replica")
        replica = next(r for r in self.table.models[model].versions[version].replicas if r.url == url)
        entry["replicas"].remove(url)
        routes = await self.put_routes(data)
        # Out of rotation now; answer once its in-flight requests are done, so its server can be stopped.
        deadline = time.monotonic() + float(body.get("drain_s", 60))
        while replica.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {**routes, "removed": url, "drained": replica.outstanding == 0}


def _token_matches(authorization: str | None, key: str) -> bool:
    token = (authorization or "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(token.encode(), key.encode())


def _health_verdict(status: int, content: bytes) -> tuple[bool, str]:
    if status != 200:
        return False, f"HTTP {status}"
    if not content.strip():
        return True, "HTTP 200"
    text = content.decode(errors="replace")[:80]
    try:
        data = json.loads(content)
    except ValueError:
        return False, f"garbage health answer: {text!r}"
    if not isinstance(data, dict) or str(data.get("status", "ok")).lower() not in ("ok", "healthy"):
        return False, f"unhealthy answer: {text!r}"
    return True, "HTTP 200"


def _find_request(path: Path, request_id: str) -> dict | None:
    """A request's versions from the request log (for feedback on requests before a restart)."""
    if not path.exists():
        return None
    needle = f'"request_id": "{request_id}"'
    with open(path, encoding="utf-8") as f:
        for line in f:
            if needle in line:
                rec = json.loads(line)
                return {k: rec.get(k, "") for k in ("model", "model_version", "prompt_version")}
    return None


# ---------------------------------------------------------------- router


def create_app(service: GatewayService) -> FastAPI:
    """The FastAPI app; handlers fetch `service` from `app.state`."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await app.state.service.start()
        task = asyncio.create_task(app.state.service.health_loop())
        yield
        task.cancel()
        await app.state.service.close()

    app = FastAPI(title="llmops gateway", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return GatewayError(exc.status_code, str(exc.detail), _error_type(exc.status_code)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return GatewayError(400, str(exc.errors())).response()

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return GatewayError(500, f"gateway error: {exc!r}", "api_error", "internal_error").response()

    # Plain Starlette routes: the hot path skips FastAPI's per-request dependency solving.
    async def chat_completions(request: Request) -> Response:
        return await request.app.state.service.handle("/v1/chat/completions", request)

    async def completions(request: Request) -> Response:
        return await request.app.state.service.handle("/v1/completions", request)

    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.router.add_route("/v1/completions", completions, methods=["POST"])

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        svc.authorize(request.headers.get("authorization"))
        for m in svc.table.models.values():
            await svc.backend_model(m.stable())
        return JSONResponse(svc.models())

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        svc.authorize(request.headers.get("authorization"))
        return JSONResponse(await svc.feedback(await svc.read_body(request)))

    @app.get("/health")
    async def health(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        up = await svc.check_all()
        return JSONResponse(svc.health_body(up), status_code=200 if up else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/routes")
    async def get_routes(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        svc.authorize_admin(request.headers.get("authorization"))
        return JSONResponse(svc.table.to_json())

    @app.put("/admin/routes")
    async def put_routes(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        svc.authorize_admin(request.headers.get("authorization"))
        raw = await svc.read_body(request)
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise GatewayError(400, f"Route table is not valid JSON: {e}", code="invalid_json") from e
        return JSONResponse(await svc.put_routes(data))

    @app.post("/admin/replicas")
    async def add_replica(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        svc.authorize_admin(request.headers.get("authorization"))
        return JSONResponse(await svc.change_replica(await svc.read_body(request), add=True))

    @app.delete("/admin/replicas")
    async def remove_replica(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        svc.authorize_admin(request.headers.get("authorization"))
        return JSONResponse(await svc.change_replica(await svc.read_body(request), add=False))

    return app


def load_routes(path: str | Path) -> RouteTable:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RouteError(f"--routes {path}: cannot read a JSON route table: {e}") from e
    return RouteTable.parse(data)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m llm_assets.deployment.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", default=None, help="the route table (JSON); PUT /admin/routes rewrites it")
    parser.add_argument("--backend-url", action="append", default=None,
                        help="shorthand for a one-version table: a model server (repeat for replicas)")
    parser.add_argument("--model-name", default=None, help="shorthand: the public model name clients ask for")
    parser.add_argument("--backend-model", default=None, help="shorthand: the backend's model id (default: asked)")
    parser.add_argument("--model-version", default="", help="shorthand: the registry version (default '0')")
    parser.add_argument("--model-dir", default=None,
                        help="shorthand: the model's directory: its tokenizer and config guard the context length")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("LLMOPS_API_KEY", ""))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per backend request")
    parser.add_argument("--request-log", default=None, help="JSON lines, one per finished request")
    parser.add_argument("--feedback-log", default=None, help="JSON lines, one per POST /v1/feedback")
    parser.add_argument("--health-interval", type=float, default=2.0, help="seconds between replica health checks")
    parser.add_argument("--health-timeout", type=float, default=5.0, help="a slower /health answer fails the check")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger request bodies get 413")
    parser.add_argument("--max-tokens-limit", type=int, default=4096, help="larger max_tokens get 400")
    args = parser.parse_args(argv)
    if args.routes and (args.backend_url or args.model_name):
        parser.error("give either --routes or the single-backend shorthand (--backend-url, --model-name), not both")
    if not args.routes and not (args.backend_url and args.model_name):
        parser.error("give --routes PATH, or --backend-url URL and --model-name NAME")
    try:
        table = load_routes(args.routes) if args.routes else RouteTable.parse(single_backend_routes(
            args.backend_url, args.model_name, args.backend_model, args.model_version, args.model_dir))
        service = GatewayService(
            table, routes_path=args.routes, api_key=args.api_key, admin_key=os.environ.get("LLMOPS_ADMIN_KEY", ""),
            timeout=args.timeout, request_log=args.request_log, feedback_log=args.feedback_log,
            health_interval=args.health_interval, health_timeout=args.health_timeout,
            max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit)
    except RouteError as e:
        parser.exit(2, f"gateway: {e}\n")
    disable_created_metrics()  # the *_created series only add noise to /metrics
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
