"""The monitoring report's prompt A/B table and plots, from request, feedback and score rows in the gateway
contract's format."""

import pandas as pd
import pytest
from PIL import Image

from llm_assets.monitoring import report
from llm_assets.monitoring.requestlog import FEEDBACK_FIELDS, REQUEST_FIELDS, validate
from tests.monitoring.logs import feedback_row, request_row


def frame(rows, fields):
    df = pd.DataFrame([validate(r, fields) for r in rows])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


@pytest.fixture
def ab_rows():
    """Prompt p1: 4 fast answers, 1 error, 2 of 3 feedbacks good. Prompt p2: 3 slow answers, 1 bad feedback."""
    requests = frame([request_row(i, latency_ms=100.0 + 10 * i, ttft_ms=20.0) for i in range(4)]
                     + [request_row(4, status=503)]
                     + [request_row(10 + i, prompt_version="p2", latency_ms=400.0, ttft_ms=200.0, completion_tokens=4)
                        for i in range(3)], REQUEST_FIELDS)
    feedback = frame([feedback_row("req-0", thumbs="up"), feedback_row("req-1", rating=5),
                      feedback_row("req-2", rating=2), feedback_row("req-10", thumbs="down"),
                      feedback_row("req-unknown", thumbs="up")], FEEDBACK_FIELDS)
    scores = pd.DataFrame({"request_id": ["req-0", "req-1", "req-10", "req-11"], "toxic": [False, False, True, False]})
    return requests, feedback, scores


def test_prompt_ab_per_prompt_version(ab_rows):
    ab = report.prompt_ab(*ab_rows)
    assert list(ab["prompt_version"]) == ["p1", "p2"] and list(ab["prompt_name"]) == ["assistant", "assistant"]
    p1, p2 = ab.to_dict("records")
    assert p1["requests"] == 5 and p1["error_rate"] == pytest.approx(0.2)
    assert p1["latency_p50_ms"] == 115.0 and p1["latency_p95_ms"] == pytest.approx(128.5)
    # the median per-request decode rate: 10 tokens in 80, 90, 100 and 110 ms after the first token
    assert p1["tokens_per_s"] == pytest.approx((10 / 0.09 + 10 / 0.1) / 2)
    assert p1["feedback"] == 3 and p1["positive_feedback_rate"] == pytest.approx(2 / 3)
    assert p1["scored"] == 2 and p1["toxicity_rate"] == 0.0
    assert p2["requests"] == 3 and p2["error_rate"] == 0.0 and p2["latency_p95_ms"] == 400.0
    assert p2["tokens_per_s"] == pytest.approx(20.0) and p2["positive_feedback_rate"] == 0.0
    assert p2["toxicity_rate"] == 0.5
    md = report.ab_markdown(ab)
    assert "| assistant | p1 | 5 | 20.0% | 115 | 128 | 105.6 | 3 | 66.7% | 0.0% |" in md


def test_prompt_ab_without_feedback_or_scores_says_so(ab_rows):
    requests, _, _ = ab_rows
    ab = report.prompt_ab(requests, pd.DataFrame(), pd.DataFrame(columns=["request_id", "toxic"]))
    assert list(ab["feedback"]) == [0, 0] and ab["positive_feedback_rate"].isna().all()
    assert ab["toxicity_rate"].isna().all() and "| 0 | - | - |" in report.ab_markdown(ab)
    assert report.prompt_ab(requests.iloc[0:0], pd.DataFrame(), pd.DataFrame()).empty


def test_build_draws_the_prompt_ab_bars(ab_rows, tmp_path):
    ab = report.prompt_ab(*ab_rows)
    empty = pd.DataFrame()
    plots = report.build(empty, empty, empty, empty, tmp_path, ab)
    assert set(plots) == {"prompt_ab_plot"}
    with Image.open(plots["prompt_ab_plot"]) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100
    assert report.build(empty, empty, empty, empty, tmp_path / "none", ab.iloc[0:0]) == {}
