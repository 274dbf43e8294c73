"""Scoring sampled live requests with the evaluation stage's scorers, and feedback joined by request id."""

import pandas as pd
import pytest

from llm_assets.monitoring import feedback_data, quality
from llm_assets.monitoring.requestlog import FEEDBACK_FIELDS, REQUEST_FIELDS, validate
from tests.monitoring.logs import feedback_row, request_row


def frame(rows, fields=REQUEST_FIELDS):
    df = pd.DataFrame([validate(r, fields) for r in rows])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


def test_sample_is_deterministic_and_about_the_fraction():
    rows = frame([request_row(i) for i in range(400)] + [request_row(400, status=500)])
    picked = quality.sample(rows, 0.25, seed=1)
    assert 70 <= len(picked) <= 130 and (picked["status"] == 200).all()
    assert picked["request_id"].tolist() == quality.sample(rows, 0.25, seed=1)["request_id"].tolist()
    with pytest.raises(ValueError, match="fraction"):
        quality.sample(rows, 0.0)


def test_scores_each_failure_kind():
    rows = frame([
        request_row(0, response="Tokenizers split text into tokens."),
        request_row(1, response="You are a fucking idiot, shut up."),
        request_row(2, response="I'm sorry, I cannot help with that."),
        request_row(3, response="Write to jane.doe@example.com or call."),
        request_row(4, response="Paris is the capital of France. The moon is made of cheese.",
                    context=["Paris is the capital and largest city of France."]),
    ])
    s = quality.score(rows).set_index("request_id")
    assert not s.loc["req-0", ["toxic", "refusal"]].any() and s.loc["req-0", "pii_found"] == 0
    assert s.loc["req-1", "toxic"] and s.loc["req-1", "toxicity"] > 0.5
    assert s.loc["req-2", "refusal"]
    assert s.loc["req-3", "pii_found"] == 1 and s.loc["req-3", "pii_types"] == "email"
    assert s.loc["req-4", "hallucination"] == 0.5  # the cheese claim is not in the passage
    assert pd.isna(s.loc["req-0", "hallucination"])  # no retrieved context logged
    summary = quality.summarize(s.reset_index(), frame([feedback_row("req-0", thumbs="down"),
                                                        feedback_row("req-1", rating=5)], FEEDBACK_FIELDS))
    assert summary["toxicity_rate"] == 0.2 and summary["refusal_rate"] == 0.2 and summary["pii_leak_rate"] == 0.2
    assert summary["hallucination_rate"] == 0.5 and summary["with_context"] == 1
    assert summary["negative_feedback_rate"] == 0.5 and summary["mean_rating"] == 5.0
    ok, breaches = quality.quality_verdict(summary, {"toxicity_rate": 0.05, "refusal_rate": 0.5})
    assert not ok and breaches == ["toxicity_rate 0.200 > 0.05"]


def test_newest_feedback_wins_in_the_join_and_the_dataset():
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    requests = frame([request_row(0, prompt="hi", response="hello"), request_row(1, prompt="q", response="a"),
                      request_row(2, status=500), request_row(3, prompt="x", response="y")])
    feedback = frame([feedback_row("req-0", thumbs="down", at=now - timedelta(minutes=5)),
                      feedback_row("req-0", rating=5, at=now),           # changed their mind
                      feedback_row("req-1", thumbs="up", rating=2),     # contradictory: not good
                      feedback_row("req-2", thumbs="up"),                # failed request: skipped
                      feedback_row("req-3", rating=4)], FEEDBACK_FIELDS)
    joined = quality.join_feedback(quality.score(requests[requests["status"] == 200]), feedback).set_index("request_id")
    assert joined.loc["req-0", "rating"] == 5
    examples, counts = feedback_data.good_pairs(requests, feedback)
    assert examples["request_id"].tolist() == ["req-0", "req-3"]
    assert counts == {"feedback": 4, "good": 3, "examples": 2, "skipped": 1}
