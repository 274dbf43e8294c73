"""The gateway's request and feedback logs (JSON lines, the contract in the gateway spec), read incrementally.

A cursor `{"offset": bytes, "inode": int}` remembers how far a log was read. Only complete lines are
consumed (a line the gateway is still writing waits for the next read), and a log that was replaced or
truncated (new inode, or shorter than the offset) is read again from the start; callers drop rows whose
request id they already hold. Lines that are not valid rows are returned with a reason, for quarantine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

# field -> (type, required); types are checked, missing optional fields get a default.
REQUEST_FIELDS: dict[str, tuple[type, bool]] = {
    "request_id": (str, True), "timestamp": (str, True), "endpoint": (str, False), "model": (str, False),
    "model_version": (str, True), "prompt_name": (str, False), "prompt_version": (str, False),
    "user": (str, False), "replica": (str, False), "status": (int, True), "latency_ms": (float, True),
    "ttft_ms": (float, False), "prompt_tokens": (int, False), "completion_tokens": (int, False),
    "retries": (int, False), "stream": (bool, False), "error": (str, False), "prompt": (str, False),
    "response": (str, False),
}
FEEDBACK_FIELDS: dict[str, tuple[type, bool]] = {
    "request_id": (str, True), "timestamp": (str, True), "model": (str, False), "model_version": (str, False),
    "prompt_version": (str, False), "rating": (int, False), "thumbs": (str, False), "comment": (str, False),
}
_DEFAULTS = {str: "", int: None, float: None, bool: False}


@dataclass(frozen=True)
class LogRead:
    rows: list[dict]
    rejected: list[dict]
    """{"line": raw text, "reason": why it is not a row}"""
    cursor: dict


def parse_timestamp(value: str) -> datetime:
    """ISO-8601 to an aware UTC datetime (a naive one is taken as UTC)."""
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _coerce(value, kind: type):
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and value is None:
        return ""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}"[:200])


def validate(record, fields: dict[str, tuple[type, bool]]) -> dict:
    """One log record as a clean row; ValueError naming the bad field otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object: {type(record).__name__}")
    row = {}
    for name, (kind, required) in fields.items():
        if record.get(name) is None:
            if required:
                raise ValueError(f"missing required field {name!r}")
            row[name] = _DEFAULTS[kind]
            continue
        try:
            row[name] = _coerce(record[name], kind)
        except TypeError as e:
            raise ValueError(f"field {name!r}: {e}") from None
    if not row["request_id"]:
        raise ValueError("empty request_id")
    try:
        row["timestamp"] = parse_timestamp(row["timestamp"])
    except ValueError:
        raise ValueError(f"field 'timestamp': not ISO-8601: {record['timestamp']!r}") from None
    # Retrieved passages, when the gateway logged a RAG answer: kept for the hallucination score.
    context = record.get("context")
    row["context"] = json.dumps(context) if isinstance(context, list) else (context or "")
    return row


def read_new(path: str | Path, cursor: dict | None, fields: dict[str, tuple[type, bool]]) -> LogRead:
    """Rows appended to the log at `path` since `cursor` (None: from the start)."""
    path = Path(path)
    if not path.exists():
        return LogRead([], [], dict(cursor or {"offset": 0, "inode": 0}))
    stat = os.stat(path)
    offset = int((cursor or {}).get("offset", 0))
    if (cursor or {}).get("inode") != stat.st_ino or stat.st_size < offset:
        offset = 0  # a new or truncated file
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]  # a partial last line waits for the next read
    rows, rejected = [], []
    for raw in complete.splitlines():
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            rows.append(validate(json.loads(line), fields))
        except json.JSONDecodeError as e:
            rejected.append({"line": line[:4000], "reason": f"invalid JSON: {e}"})
        except ValueError as e:
            rejected.append({"line": line[:4000], "reason": str(e)})
    return LogRead(rows, rejected, {"offset": offset + len(complete), "inode": stat.st_ino})
