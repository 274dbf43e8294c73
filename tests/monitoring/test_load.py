"""The probe load's own summary of its requests (the metrics themselves come from the gateway's log)."""

from datetime import datetime, timezone

import pytest

from llm_assets.monitoring.load import RequestRecord, summarize

SUMMARY_KEYS = {"latency_p50_ms", "latency_p95_ms", "tokens_per_s", "error_rate", "requests", "model_version"}


def record(latency_ms, status=200, tokens=10):
    return RequestRecord(datetime.now(timezone.utc), latency_ms, status, 5, tokens if status == 200 else 0, "")


def test_summarize_hand_written_records():
    records = [record(10.0), record(20.0), record(30.0), record(40.0), record(500.0, status=503)]
    s = summarize(records, wall_s=2.0, model_version="7")
    assert set(s) == SUMMARY_KEYS
    assert s["latency_p50_ms"] == 25.0  # errors do not count towards latency
    assert s["latency_p95_ms"] == pytest.approx(38.5)
    assert s["tokens_per_s"] == 20.0
    assert s["error_rate"] == 0.2 and s["requests"] == 5 and s["model_version"] == "7"
