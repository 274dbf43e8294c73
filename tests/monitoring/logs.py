"""Small request and feedback logs in the gateway contract's format (docs: the gateway spec), for tests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

T0 = datetime(2025, 1, 6, 12, 0, tzinfo=timezone.utc)


def request_row(i: int, *, version: str = "3", prompt_version: str = "p1", status: int = 200,
                latency_ms: float = 100.0, ttft_ms: float = 20.0, completion_tokens: int = 10,
                prompt: str = "What is a tokenizer?", response: str = "A tokenizer splits text into tokens.",
                replica: str = "http://127.0.0.1:41001", at: datetime | None = None, **extra) -> dict:
    return {"request_id": f"req-{i}", "timestamp": ((at or T0) + timedelta(seconds=i)).isoformat(),
            "endpoint": "/v1/chat/completions", "model": "llmops-gpt", "model_version": version,
            "prompt_name": "assistant", "prompt_version": prompt_version, "user": f"u{i % 3}", "replica": replica,
            "status": status, "latency_ms": latency_ms, "ttft_ms": ttft_ms, "prompt_tokens": 5,
            "completion_tokens": completion_tokens if status == 200 else 0, "retries": 0, "stream": False,
            "error": "" if status == 200 else "backend 503", "prompt": prompt,
            "response": response if status == 200 else "", **extra}


def feedback_row(request_id: str, *, rating: int | None = None, thumbs: str | None = None, comment: str = "",
                 at: datetime | None = None, version: str = "3") -> dict:
    row = {"request_id": request_id, "timestamp": (at or datetime.now(timezone.utc)).isoformat(),
           "model": "llmops-gpt", "model_version": version, "prompt_version": "p1", "comment": comment}
    if rating is not None:
        row["rating"] = rating
    if thumbs is not None:
        row["thumbs"] = thumbs
    return row


def append_jsonl(path: Path, rows: list[dict], partial: str = "") -> None:
    """Append rows as JSON lines, then optionally an unfinished line (a write in progress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write(partial)
