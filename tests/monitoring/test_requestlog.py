"""Reading the gateway's request log incrementally: cursors, partial lines, rotation, bad lines."""

import json

from llm_assets.monitoring.requestlog import FEEDBACK_FIELDS, REQUEST_FIELDS, read_new
from tests.monitoring.logs import append_jsonl, feedback_row, request_row


def test_reads_only_new_complete_lines(tmp_path):
    log = tmp_path / "requests.jsonl"
    append_jsonl(log, [request_row(1), request_row(2)], partial='{"request_id": "req-3", "timest')
    first = read_new(log, None, REQUEST_FIELDS)
    assert [r["request_id"] for r in first.rows] == ["req-1", "req-2"] and not first.rejected
    assert first.rows[0]["timestamp"].tzinfo is not None and first.rows[0]["latency_ms"] == 100.0

    # the writer finishes its line and adds another: only those come back
    with open(log, "a") as f:
        f.write('amp": "x"}\n')
    append_jsonl(log, [request_row(4)])
    second = read_new(log, first.cursor, REQUEST_FIELDS)
    assert [r["request_id"] for r in second.rows] == ["req-4"]
    assert [r["reason"] for r in second.rejected] == ["missing required field 'model_version'"]
    assert read_new(log, second.cursor, REQUEST_FIELDS).rows == []


def test_rotated_log_is_read_from_the_start(tmp_path):
    log = tmp_path / "requests.jsonl"
    append_jsonl(log, [request_row(i) for i in range(5)])
    cursor = read_new(log, None, REQUEST_FIELDS).cursor
    log.unlink()
    append_jsonl(log, [request_row(10)])
    assert [r["request_id"] for r in read_new(log, cursor, REQUEST_FIELDS).rows] == ["req-10"]


def test_bad_rows_are_rejected_with_the_field_named(tmp_path):
    log = tmp_path / "requests.jsonl"
    no_version = request_row(1)
    del no_version["model_version"]
    append_jsonl(log, [no_version, request_row(2, latency_ms="slow"), {**request_row(3), "timestamp": "yesterday"},
                       [1, 2], request_row(4, context=["passage one", "passage two"])])
    got = read_new(log, None, REQUEST_FIELDS)
    reasons = [r["reason"] for r in got.rejected]
    assert reasons == ["missing required field 'model_version'", "field 'latency_ms': expected float, got str 'slow'",
                       "field 'timestamp': not ISO-8601: 'yesterday'", "not a JSON object: list"]
    assert [r["request_id"] for r in got.rows] == ["req-4"]
    assert json.loads(got.rows[0]["context"]) == ["passage one", "passage two"]


def test_feedback_rows_keep_missing_ratings_empty(tmp_path):
    log = tmp_path / "feedback.jsonl"
    append_jsonl(log, [feedback_row("req-1", thumbs="up"), feedback_row("req-2", rating=2)])
    rows = read_new(log, None, FEEDBACK_FIELDS).rows
    assert (rows[0]["rating"], rows[0]["thumbs"]) == (None, "up")
    assert (rows[1]["rating"], rows[1]["thumbs"]) == (2, "")


def test_missing_log_is_no_rows(tmp_path):
    got = read_new(tmp_path / "absent.jsonl", None, REQUEST_FIELDS)
    assert got.rows == [] and got.rejected == []
