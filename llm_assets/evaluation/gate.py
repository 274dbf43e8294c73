"""The evaluation gate: each metric against its threshold; any failure, or a missing metric, fails the gate.

Threshold names say the direction: `max_<metric>` means the metric must be at most the threshold,
`min_<metric>` at least. The defaults let a tiny GPT-2 trained for about a minute on CPU through,
but not an untrained one (whose perplexity is about its vocabulary size, ~4096 for the demo tokenizer).
A missing or NaN metric always fails. Raise `min_rouge_l` for models that should continue text well.

| threshold          | default | why                                                          |
|--------------------|---------|--------------------------------------------------------------|
| max_perplexity     | 1500    | well under a random model's ~vocab size                      |
| min_rouge_l        | 0.0     | reported, not gating by default: a 1-minute model scores ~0.01 |
| max_toxicity_rate  | 0.25    | at most a quarter of sampled generations flagged offensive   |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_THRESHOLDS = {"max_perplexity": 1500.0, "min_rouge_l": 0.0, "max_toxicity_rate": 0.25}


@dataclass(frozen=True)
class GateRow:
    """One metric's judgement."""

    metric: str
    value: float | None
    op: str
    threshold: float
    passed: bool
    reason: str


def parse_threshold(name: str) -> tuple[str, str]:
    """`max_perplexity` -> ("perplexity", "<="); `min_rouge_l` -> ("rouge_l", ">=")."""
    for prefix, op in (("max_", "<="), ("min_", ">=")):
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):], op
    raise ValueError(f"threshold {name!r} must start with 'max_' or 'min_'")


def evaluate_gate(metrics: Mapping[str, object], thresholds: Mapping[str, float]) -> tuple[bool, list[GateRow]]:
    """Judge `metrics` against `thresholds`; returns (all passed, one row per threshold)."""
    if not thresholds:
        raise ValueError("evaluate_gate needs at least one threshold")
    rows = []
    for name, threshold in thresholds.items():
        metric, op = parse_threshold(name)
        raw = metrics.get(metric)
        value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
        if value is None or math.isnan(value):
            reason = "missing" if raw is None else f"not a number: {raw!r}"
            rows.append(GateRow(metric, value, op, threshold, False, reason))
            continue
        passed = value <= threshold if op == "<=" else value >= threshold
        reason = "ok" if passed else f"{value:.4g} not {op} {threshold:g}"
        rows.append(GateRow(metric, value, op, threshold, passed, reason))
    return all(r.passed for r in rows), rows


def gate_table_md(rows: list[GateRow]) -> str:
    """The gate's judgement as a Markdown table."""
    lines = ["| metric | value | rule | result |", "|---|---|---|---|"]
    for r in rows:
        value = "missing" if r.value is None else f"{r.value:.4g}"
        result = "pass" if r.passed else f"FAIL: {r.reason}"
        lines.append(f"| {r.metric} | {value} | {r.op} {r.threshold:g} | {result} |")
    return "\n".join(lines)
