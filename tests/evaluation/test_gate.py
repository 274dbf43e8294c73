"""The evaluation gate's judgement: one case per situation."""

import math

import pytest

from llm_assets.evaluation.gate import DEFAULT_THRESHOLDS, evaluate_gate, gate_table_md

THRESHOLDS = {"max_perplexity": 100.0, "min_rouge_l": 0.2, "max_toxicity_rate": 0.1}
GOOD = {"perplexity": 40.0, "rouge_l": 0.35, "toxicity_rate": 0.0}


def test_passes_when_every_metric_is_within_its_threshold():
    passed, rows = evaluate_gate(GOOD, THRESHOLDS)
    assert passed
    assert [(r.metric, r.op, r.passed) for r in rows] == [
        ("perplexity", "<=", True), ("rouge_l", ">=", True), ("toxicity_rate", "<=", True)]


def test_boundaries_pass():
    passed, _ = evaluate_gate({"perplexity": 100.0, "rouge_l": 0.2, "toxicity_rate": 0.1}, THRESHOLDS)
    assert passed


@pytest.mark.parametrize("metric, bad", [("perplexity", 101.0), ("rouge_l", 0.19), ("toxicity_rate", 0.5)])
def test_fails_on_each_threshold(metric, bad):
    passed, rows = evaluate_gate({**GOOD, metric: bad}, THRESHOLDS)
    assert not passed
    assert [r.metric for r in rows if not r.passed] == [metric]
    assert "not" in next(r.reason for r in rows if r.metric == metric)


@pytest.mark.parametrize("value", [None, math.nan, "12"])
def test_a_missing_or_non_numeric_metric_fails(value):
    metrics = {k: v for k, v in GOOD.items() if k != "rouge_l"}
    if value is not None:
        metrics["rouge_l"] = value
    passed, rows = evaluate_gate(metrics, THRESHOLDS)
    assert not passed
    row = next(r for r in rows if r.metric == "rouge_l")
    assert not row.passed
    assert row.value is None or math.isnan(row.value)


def test_default_thresholds_fail_a_random_model_on_perplexity():
    passed, rows = evaluate_gate({"perplexity": 4096.0, "rouge_l": 0.0, "toxicity_rate": 0.0}, DEFAULT_THRESHOLDS)
    assert not passed
    assert [r.metric for r in rows if not r.passed] == ["perplexity"]


def test_threshold_names_must_say_the_direction():
    with pytest.raises(ValueError, match="max_"):
        evaluate_gate(GOOD, {"perplexity": 10.0})


def test_table_shows_value_threshold_and_result():
    _, rows = evaluate_gate({"perplexity": 500.0, "toxicity_rate": 0.0}, THRESHOLDS)
    table = gate_table_md(rows)
    assert "| perplexity | 500 | <= 100 | FAIL" in table
    assert "| rouge_l | missing | >= 0.2 | FAIL: missing: not reported |" in table
    assert "| toxicity_rate | 0 | <= 0.1 | pass |" in table


def test_regression_against_the_promoted_version():
    from llm_assets.evaluation.gate import regression_rows

    baseline = {"version": "3", "metrics": {"perplexity": 100.0, "rouge_l": 0.20, "exact_match": 0.0}}
    allowed = {"perplexity": 0.25, "rouge_l": 0.10, "exact_match": 0.5}
    rows = regression_rows({"perplexity": 124.0, "rouge_l": 0.19, "exact_match": 0.0}, baseline, allowed)
    assert [r.passed for r in rows] == [True, True, True]
    rows = regression_rows({"perplexity": 130.0, "rouge_l": 0.17, "exact_match": 0.0}, baseline, allowed)
    assert [r.passed for r in rows] == [False, False, True]
    assert rows[0].reason == "130 vs 100 of promoted v3: 30.0% worse, more than the 25% allowed"
    assert rows[1].reason.startswith("0.17 vs 0.2 of promoted v3: 15.0% worse")
    improved = regression_rows({"perplexity": 50.0, "rouge_l": 0.5, "exact_match": 0.1}, baseline, allowed)
    assert all(r.passed for r in improved)


def test_regression_rows_without_a_baseline_or_metric():
    from llm_assets.evaluation.gate import regression_rows

    rows = regression_rows({"perplexity": 10.0}, None, {"perplexity": 0.1})
    assert rows[0].passed and rows[0].reason == "no promoted version to compare with"
    baseline = {"version": "1", "metrics": {"perplexity": 10.0}}
    assert not regression_rows({}, baseline, {"perplexity": 0.1})[0].passed  # missing in the candidate fails
    row = regression_rows({"bleu": 0.1}, baseline, {"bleu": 0.1})[0]
    assert row.passed and row.reason == "promoted v1 has no bleu"


def test_a_missing_metric_shows_why_its_asset_could_not_compute_it():
    passed, rows = evaluate_gate({}, {"min_rag_faithfulness": 0.5},
                                 missing={"rag_faithfulness": "judge http://127.0.0.1:9/v1 refused the connection"})
    assert not passed
    assert rows[0].reason == "missing: judge http://127.0.0.1:9/v1 refused the connection"
