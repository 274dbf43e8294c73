"""A stand-in OpenAI model server for the gateway's routing tests: a real uvicorn server, no model.

    python -m tests.deployment.standin_backend --port 8101 --name a --delay 0.1

It answers /v1/chat/completions and /v1/completions (streaming too) with text naming the server and
echoing the messages it got, so a test sees which replica answered and what the gateway sent. Its
behaviour switches at run time with `POST /_mode {"health": ..., "completions": ..., "delay": ...}`:
health "ok" | "garbage" (200 with non-JSON) | "slow" (answers after 30 s) | "error" (500);
completions "ok" | "garbage" | "error" (500). `GET /_stats` gives the number of requests served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse


def create_app(name: str, delay: float) -> FastAPI:
    app = FastAPI()
    state = {"health": "ok", "completions": "ok", "delay": delay, "served": 0, "in_flight": 0}

    @app.get("/health")
    async def health() -> Response:
        if state["health"] == "garbage":
            return PlainTextResponse("<html>proxy error page</html>")
        if state["health"] == "slow":
            await asyncio.sleep(30)
        if state["health"] == "error":
            return JSONResponse({"status": "unhealthy"}, status_code=500)
        return JSONResponse({"status": "ok"})

    @app.post("/_mode")
    async def mode(request: Request) -> dict:
        state.update(await request.json())
        return state

    @app.get("/_stats")
    async def stats() -> dict:
        return state

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": f"standin-{name}", "object": "model"}]}

    async def complete(request: Request, chat: bool) -> Response:
        body = await request.json()
        state["in_flight"] += 1
        try:
            await asyncio.sleep(state["delay"])
        finally:
            state["in_flight"] -= 1
        if state["completions"] == "error":
            return JSONResponse({"detail": "stand-in failure"}, status_code=500)
        if state["completions"] == "garbage":
            return PlainTextResponse("Bad Gateway<html>")
        state["served"] += 1
        text = f"from {name}: " + json.dumps(body.get("messages") if chat else body.get("prompt"))
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if body.get("stream"):
            async def events():
                for piece in (f"from {name}", ": ", "streamed"):
                    delta = {"delta": {"content": piece}} if chat else {"text": piece}
                    yield f"data: {json.dumps({'id': 'x', 'model': body.get('model'), 'choices': [{'index': 0, **delta}]})}\n\n"
                    await asyncio.sleep(0.01)
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        choice = {"index": 0, "finish_reason": "stop",
                  **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
        return JSONResponse({"id": f"cmpl-{time.time_ns()}", "object": "chat.completion" if chat else "text_completion",
                             "model": body.get("model"), "choices": [choice], "usage": usage,
                             "received_model": body.get("model"), "served_by": name})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await complete(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, False)

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="standin")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    uvicorn.run(create_app(args.name, args.delay), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
