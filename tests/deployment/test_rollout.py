"""Canary decisions from request and feedback logs: one case per situation."""

import json

import pandas as pd
import pytest

from llm_assets.deployment import rollout
from llm_assets.deployment.rollout import PROMOTE, ROLLBACK, WAIT, ArmStats, CanaryThresholds


def requests_log(version: str, n: int, errors: int = 0, latency_ms: float = 100.0, start: int = 0) -> list[dict]:
    return [{"request_id": f"{version}-{start + i}", "model_version": version, "prompt_version": "p1",
             "status": 500 if i < errors else 200, "latency_ms": latency_ms + i % 5} for i in range(n)]


def arm(version="1", requests=50, error_rate=0.0, latency=100.0, toxicity=None, feedback=0, positive=None):
    return ArmStats(version, requests, error_rate, latency, toxicity, feedback, positive)


def test_promotes_a_candidate_with_enough_traffic_and_nothing_worse():
    d = rollout.decide(arm("1"), arm("2", latency=110.0))
    assert d.action == PROMOTE and "50 stable and 50 candidate" in d.reasons[0]


def test_waits_while_an_arm_has_too_few_requests():
    d = rollout.decide(arm("1"), arm("2", requests=5))
    assert d.action == WAIT and "5 requests in the smaller arm, 20 needed" in d.reasons[0]


@pytest.mark.parametrize("candidate, measure", [
    (arm("2", error_rate=0.10), "error_rate"),
    (arm("2", latency=400.0), "latency_p95_ms"),
    (arm("2", toxicity=0.30), "toxicity_rate"),
    (arm("2", feedback=10, positive=0.2), "negative_feedback"),
])
def test_rolls_back_a_candidate_worse_on_any_measure(candidate, measure):
    stable = arm("1", toxicity=0.0, feedback=10, positive=0.9)
    d = rollout.decide(stable, candidate)
    assert d.action == ROLLBACK and len(d.reasons) == 1 and d.reasons[0].startswith(measure)


def test_feedback_counts_only_with_enough_of_it_on_both_arms():
    stable = arm("1", feedback=10, positive=0.9)
    assert rollout.decide(stable, arm("2", feedback=2, positive=0.0)).action == PROMOTE


def test_a_broken_candidate_is_rolled_back_before_the_minimum_sample():
    d = rollout.decide(arm("1"), arm("2", requests=4, error_rate=1.0))
    assert d.action == ROLLBACK and "error_rate" in d.reasons[0]


def test_arm_stats_from_request_and_feedback_logs(tmp_path):
    log = tmp_path / "requests.jsonl"
    rows = requests_log("1", 40) + requests_log("2", 20, errors=5, latency_ms=300.0)
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"request_id": "torn')
    requests = rollout.read_jsonl(log)
    assert len(requests) == 60  # the torn last line is skipped
    feedback = pd.DataFrame([{"request_id": "2-7", "thumbs": "down"}, {"request_id": "2-8", "rating": 5},
                             {"request_id": "1-0", "thumbs": "up"}])
    toxicity = {"2-6": 0.9, "2-7": 0.1, "1-3": 0.0}
    two = rollout.arm_stats(requests, feedback, "model_version", "2", toxicity)
    assert two.requests == 20 and two.error_rate == pytest.approx(0.25)
    assert 300 <= two.latency_p95_ms <= 305  # errors excluded
    assert two.toxicity_rate == pytest.approx(0.5) and two.feedback == 2 and two.positive_feedback == pytest.approx(0.5)
    one = rollout.arm_stats(requests, feedback, "model_version", "1", toxicity)
    d = rollout.decide(one, two, CanaryThresholds(min_requests=20))
    assert d.action == ROLLBACK
    table = rollout.decision_table_md(d)
    assert "| error_rate | 0 | 0.25 |" in table and "**rollback**" in table


def test_arm_stats_of_a_version_without_traffic():
    empty = rollout.arm_stats(rollout.read_jsonl("/nonexistent/requests.jsonl"), pd.DataFrame(), "model_version", "3")
    assert empty == ArmStats("3", 0, None, None, None, 0, None)
    assert rollout.decide(empty, empty).action == WAIT
