"""The llmops gateway: an OpenAI-compatible front for one model server, with Prometheus metrics.

Clients call the gateway by the deployed model's public name; the gateway checks the API key (when one
is set), rewrites `model` to the backend's own id (`transformers serve` accepts only its model path,
vLLM its served name), forwards the request, streams server-sent events through, and counts requests,
latency and generated tokens for `/metrics`.

    python -m llm_assets.deployment.gateway --backend-url http://127.0.0.1:8001 \\
        --model-name llmops-gpt --model-version 3 --host 127.0.0.1 --port 8000

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health (checks the
backend), GET /metrics. The API key comes from `--api-key` or the `LLMOPS_API_KEY` environment
variable (preferred: it stays out of `ps`); with a key set, /v1/* needs `Authorization: Bearer <key>`.
With `--model-dir`, requests that would run past the context window get a 400
(`context_length_exceeded`) instead of reaching the backend. Errors have OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.

Layout follows vLLM's OpenAI layer: protocol (the error body), serving (`GatewayService`, which owns
the logic) and router (`create_app`, thin handlers that fetch the service from `app.state`).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

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
        self.body = ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status)


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    return "invalid_request_error" if status < 500 else "api_error"


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


# ---------------------------------------------------------------- serving

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    """The gateway's Prometheus series, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("gateway_request_latency_seconds", "Time to the last byte of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.completion_tokens = Counter("gateway_generated_tokens", "Completion tokens generated",
                                         ["endpoint"], registry=self.registry)
        self.prompt_tokens = Counter("gateway_prompt_tokens", "Prompt tokens processed", ["endpoint"],
                                     registry=self.registry)
        self.backend_up = Gauge("gateway_backend_up", "1 when the last backend health check passed",
                                registry=self.registry)

    def observe(self, endpoint: str, status: int, seconds: float, usage: dict | None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if usage:
            self.completion_tokens.labels(endpoint).inc(int(usage.get("completion_tokens") or 0))
            self.prompt_tokens.labels(endpoint).inc(int(usage.get("prompt_tokens") or 0))


REQUIRED_FIELDS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}


class ContextGuard:
    """Rejects requests that would run past the model's context window, before they reach the backend.

    Why: `transformers serve --continuous-batching` crashes its batching worker on a position index past
    `n_positions` and then answers 503 to every later request. The prompt is counted with the model's
    own tokenizer and chat template; a missing `max_tokens` is set to the room left (OpenAI's default).
    """

    def __init__(self, model_dir: str):
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def prompt_tokens(self, path: str, body: dict) -> int:
        try:
            if path == "/v1/chat/completions":
                ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True)
                return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)
            prompt = body["prompt"]
            prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
            return max(len(p) if isinstance(p, list) else len(self.tokenizer(str(p))["input_ids"]) for p in prompts)
        except (TypeError, ValueError, KeyError, AttributeError, jinja2.TemplateError) as e:
            field = REQUIRED_FIELDS[path]
            raise GatewayError(400, f"'{field}' cannot be tokenized: {e}", param=field, code="invalid_value") from e

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


class GatewayService:
    """Forwards OpenAI requests to one backend under the public model name, and measures them."""

    def __init__(self, backend_url: str, model_name: str, backend_model: str | None = None,
                 model_version: str = "", api_key: str = "", timeout: float = 300.0,
                 guard: ContextGuard | None = None):
        self.backend_url = backend_url.rstrip("/")
        self.model_name = model_name
        self.backend_model = backend_model
        self.model_version = model_version
        self.api_key = api_key
        self.guard = guard
        self.created = int(time.time())
        self.metrics = GatewayMetrics()
        self.client = httpx.AsyncClient(base_url=self.backend_url,
                                        timeout=httpx.Timeout(timeout, connect=5.0))

    async def close(self) -> None:
        await self.client.aclose()

    def authorize(self, authorization: str | None) -> None:
        if not self.api_key:
            return
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise GatewayError(401, "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                               "authentication_error", "invalid_api_key")

    async def resolve_backend_model(self) -> str:
        """The backend's model id: given on the command line, else the first one it lists."""
        if self.backend_model is None:
            try:
                resp = await self.client.get("/v1/models")
                resp.raise_for_status()
                self.backend_model = resp.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
                raise GatewayError(502, f"cannot list the backend's models at {self.backend_url}: {e}",
                                   "api_error", "backend_unavailable") from e
        return self.backend_model

    async def prepare(self, path: str, raw: bytes) -> dict:
        """Parse and check a request body, and point it at the backend's model id."""
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise GatewayError(400, f"Request body is not valid JSON: {e}", code="invalid_json") from e
        if not isinstance(body, dict):
            raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
        field = REQUIRED_FIELDS[path]
        if not body.get(field):
            raise GatewayError(400, f"'{field}' is required and must not be empty.", param=field,
                               code="missing_required_parameter")
        backend_model = await self.resolve_backend_model()
        requested = body.get("model")
        if requested not in (None, "", self.model_name, backend_model):
            raise GatewayError(404, f"The model '{requested}' does not exist; this endpoint serves "
                                    f"'{self.model_name}'.", param="model", code="model_not_found")
        body["model"] = backend_model
        if self.guard is not None:
            await run_in_threadpool(self.guard.check, path, body)
        return body

    async def forward(self, path: str, raw: bytes) -> Response:
        """Forward one completion request; metrics are recorded when its answer is complete."""
        start = time.perf_counter()
        try:
            body = await self.prepare(path, raw)
            if body.get("stream"):
                return await self._stream(path, body, start)
            try:
                resp = await self.client.post(path, json=body)
            except httpx.HTTPError as e:
                raise GatewayError(502, f"backend {self.backend_url} failed: {e!r}", "api_error",
                                   "backend_unavailable") from e
            if resp.status_code != 200:
                raise backend_error(resp.status_code, resp.content)
            data = resp.json()
            data["model"] = self.model_name
            self.metrics.observe(path, 200, time.perf_counter() - start, data.get("usage"))
            return JSONResponse(data, headers={"x-llmops-model-version": self.model_version})
        except GatewayError as e:
            self.metrics.observe(path, e.status, time.perf_counter() - start, None)
            return e.response()

    async def _stream(self, path: str, body: dict, start: float) -> Response:
        try:
            resp = await self.client.send(self.client.build_request("POST", path, json=body), stream=True)
        except httpx.HTTPError as e:
            raise GatewayError(502, f"backend {self.backend_url} failed: {e!r}", "api_error",
                               "backend_unavailable") from e
        if resp.status_code != 200:
            content = await resp.aread()
            await resp.aclose()
            raise backend_error(resp.status_code, content)

        async def events() -> AsyncIterator[str]:
            usage, chunks, status = None, 0, 200
            try:
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        try:
                            event = json.loads(line[6:])
                        except ValueError:
                            event = None
                        if isinstance(event, dict):
                            event["model"] = self.model_name
                            usage = event.get("usage") or usage
                            chunks += any(_chunk_text(c) for c in event.get("choices") or [])
                            line = "data: " + json.dumps(event, separators=(",", ":"))
                    yield line + "\n"
            except httpx.HTTPError:
                status = 502
                raise
            finally:
                await resp.aclose()
                # Without a usage record, count content chunks: one token each on these backends.
                self.metrics.observe(path, status, time.perf_counter() - start,
                                     usage or {"completion_tokens": chunks})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"x-llmops-model-version": self.model_version})

    async def health(self) -> tuple[bool, str]:
        try:
            resp = await self.client.get("/health", timeout=5.0)
            ok, detail = resp.status_code == 200, f"HTTP {resp.status_code}"
        except httpx.HTTPError as e:
            ok, detail = False, repr(e)
        self.metrics.backend_up.set(1 if ok else 0)
        return ok, detail

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "llmops",
            "root": self.backend_model, "version": self.model_version}]}


def _chunk_text(choice: dict) -> str:
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


# ---------------------------------------------------------------- router


def create_app(service: GatewayService) -> FastAPI:
    """The FastAPI app; handlers fetch `service` from `app.state`."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await app.state.service.close()

    app = FastAPI(title="llmops gateway", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return GatewayError(exc.status_code, str(exc.detail), _error_type(exc.status_code)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return GatewayError(400, str(exc.errors())).response()

    async def completion(request: Request, path: str) -> Response:
        svc: GatewayService = request.app.state.service
        try:
            svc.authorize(request.headers.get("authorization"))
        except GatewayError as e:
            svc.metrics.observe(path, e.status, 0.0, None)
            return e.response()
        return await svc.forward(path, await request.body())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await completion(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await completion(request, "/v1/completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        try:
            svc.authorize(request.headers.get("authorization"))
            await svc.resolve_backend_model()
        except GatewayError as e:
            return e.response()
        return JSONResponse(svc.models())

    @app.get("/health")
    async def health(request: Request) -> Response:
        svc: GatewayService = request.app.state.service
        ok, detail = await svc.health()
        body = {"status": "ok" if ok else "unavailable", "backend": detail, "model": svc.model_name,
                "model_version": svc.model_version}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m llm_assets.deployment.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend-url", required=True, help="the model server, e.g. http://127.0.0.1:8001")
    parser.add_argument("--model-name", required=True, help="the public model name clients ask for")
    parser.add_argument("--backend-model", default=None, help="the backend's model id (default: asked)")
    parser.add_argument("--model-version", default="", help="registry version, shown in /v1/models")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("LLMOPS_API_KEY", ""))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per backend request")
    parser.add_argument("--model-dir", default=None,
                        help="the served model's directory: its tokenizer and config guard the context length")
    args = parser.parse_args(argv)
    disable_created_metrics()  # the *_created series only add noise to /metrics
    service = GatewayService(args.backend_url, args.model_name, args.backend_model, args.model_version,
                             args.api_key, args.timeout, ContextGuard(args.model_dir) if args.model_dir else None)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
