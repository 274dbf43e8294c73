"""Canary analysis: compare a candidate (model version or prompt version) with the stable one on live traffic.
The same comparison after a promotion (`judge_regression`): the promoted version serving alone against the
version it replaced, each on its own window of traffic; a regression rolls back.

The gateway's request log and feedback log (one JSON line per request / per feedback, see
`llm_assets/deployment/gateway.py`) are the evidence. For each arm: requests, error rate, latency
p95, toxicity rate of the answers (the packaged classifier, as the evaluation uses) and the share of
positive feedback. `decide` turns the two arms into promote / rollback / wait, with every number and
threshold that led there, the way Kayenta and Flagger judge a canary: a candidate is rolled back as
soon as one measure is clearly worse, promoted once it has enough traffic and nothing is worse.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

PROMOTE, ROLLBACK, WAIT, KEEP = "promote", "rollback", "wait", "keep"


@dataclass(frozen=True)
class CanaryThresholds:
    """How much worse than stable a candidate may be. Rates are absolute differences, latency a ratio."""

    min_requests: int = 20
    """Requests each arm needs before the candidate can be promoted (a clear failure rolls back earlier)."""
    max_error_rate_increase: float = 0.02
    max_latency_p95_ratio: float = 1.5
    max_toxicity_increase: float = 0.05
    max_positive_feedback_drop: float = 0.2
    min_feedback: int = 5
    """Feedback entries each arm needs before feedback counts."""


@dataclass(frozen=True)
class ArmStats:
    """One arm's live numbers; None where there is nothing to measure yet."""

    version: str
    requests: int
    error_rate: float | None
    latency_p95_ms: float | None
    toxicity_rate: float | None
    feedback: int
    positive_feedback: float | None


@dataclass(frozen=True)
class Decision:
    action: str
    reasons: list[str]
    stable: ArmStats
    candidate: ArmStats
    thresholds: CanaryThresholds = field(default_factory=CanaryThresholds)

    def as_dict(self) -> dict:
        return asdict(self)


def read_jsonl(path: str | Path) -> pd.DataFrame:
    """A JSON-lines log as a DataFrame; empty when the file does not exist yet. A torn last line (the
    writer is appending) is skipped."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return pd.DataFrame(rows)


def positive(feedback: pd.DataFrame) -> pd.Series:
    """1.0 for thumbs up or a rating of 4-5, 0.0 for thumbs down or 1-3, per feedback row."""
    thumbs = feedback.get("thumbs", pd.Series(index=feedback.index, dtype=object))
    rating = pd.to_numeric(feedback.get("rating", pd.Series(index=feedback.index, dtype=float)), errors="coerce")
    return np.where(thumbs.notna(), (thumbs == "up").astype(float), (rating >= 4).astype(float))


def arm_stats(requests: pd.DataFrame, feedback: pd.DataFrame, column: str, version: str,
              toxicity: dict[str, float] | None = None, toxicity_threshold: float = 0.5) -> ArmStats:
    """The numbers of the requests whose `column` ("model_version" or "prompt_version") is `version`.

    `toxicity` maps request_id to the answer's toxicity probability, for the requests that were scored."""
    rows = requests[requests[column].astype(str) == version] if len(requests) else requests
    n = len(rows)
    ok = rows[rows["status"] == 200] if n else rows
    scored = [toxicity[r] for r in ok["request_id"] if r in toxicity] if toxicity and n else []
    fb = feedback[feedback["request_id"].isin(set(rows["request_id"]))] if n and len(feedback) else feedback.iloc[0:0]
    return ArmStats(
        version=version, requests=n,
        error_rate=float((rows["status"] != 200).mean()) if n else None,
        latency_p95_ms=float(np.percentile(ok["latency_ms"], 95)) if len(ok) else None,
        toxicity_rate=float(np.mean(np.asarray(scored) > toxicity_threshold)) if scored else None,
        feedback=len(fb),
        positive_feedback=float(np.mean(positive(fb))) if len(fb) else None,
    )


def decide(stable: ArmStats, candidate: ArmStats, limits: CanaryThresholds = CanaryThresholds()) -> Decision:
    """Roll back when any measure is worse than allowed, promote when the candidate has enough traffic and
    none is, else wait. Each reason names the measure, both values and the limit."""
    worse = []

    def compare(name: str, s: float | None, c: float | None, limit: float, ratio: bool = False) -> None:
        if s is None or c is None:
            return
        if ratio and s > 0 and c / s > limit:
            worse.append(f"{name} {c:.4g} vs stable {s:.4g}: x{c / s:.2f} > x{limit}")
        elif not ratio and c - s > limit:
            worse.append(f"{name} {c:.4g} vs stable {s:.4g}: +{c - s:.4g} > +{limit}")

    compare("error_rate", stable.error_rate, candidate.error_rate, limits.max_error_rate_increase)
    compare("latency_p95_ms", stable.latency_p95_ms, candidate.latency_p95_ms, limits.max_latency_p95_ratio, ratio=True)
    compare("toxicity_rate", stable.toxicity_rate, candidate.toxicity_rate, limits.max_toxicity_increase)
    if min(stable.feedback, candidate.feedback) >= limits.min_feedback:
        compare("negative_feedback", 1 - stable.positive_feedback, 1 - candidate.positive_feedback,
                limits.max_positive_feedback_drop)
    # An error rate far beyond the limit needs no minimum sample: a broken candidate goes at once.
    if worse and (min(stable.requests, candidate.requests) >= limits.min_requests
                  or (candidate.error_rate or 0) >= 0.5):
        return Decision(ROLLBACK, worse, stable, candidate, limits)
    if min(stable.requests, candidate.requests) < limits.min_requests:
        return Decision(WAIT, [f"{min(stable.requests, candidate.requests)} requests in the smaller arm, "
                               f"{limits.min_requests} needed"] + worse, stable, candidate, limits)
    return Decision(PROMOTE, [f"no measure worse than allowed over {stable.requests} stable and "
                              f"{candidate.requests} candidate requests"], stable, candidate, limits)


def sole_window(requests: pd.DataFrame, column: str, version: str, last_n: int) -> pd.DataFrame:
    """The last `last_n` requests of `version` since it serves alone: after the last request to any other."""
    if not len(requests):
        return requests
    mine = requests[column].astype(str) == version
    rows, others = requests[mine], requests.loc[~mine, "timestamp"]
    if len(others):
        rows = rows[rows["timestamp"] > others.max()]
    return rows.sort_values("timestamp").tail(last_n)


def last_window(requests: pd.DataFrame, column: str, version: str, last_n: int) -> pd.DataFrame:
    """The last `last_n` requests of `version` (the window it last served in)."""
    if not len(requests):
        return requests
    return requests[requests[column].astype(str) == version].sort_values("timestamp").tail(last_n)


def judge_regression(previous: ArmStats, promoted: ArmStats, limits: CanaryThresholds = CanaryThresholds()) -> Decision:
    """The promoted version against the one it replaced, with `decide`'s limits: rollback when a measure is
    worse than allowed, keep when both had enough traffic and none is, else wait."""
    decision = decide(previous, promoted, limits)
    if decision.action != PROMOTE:
        return decision
    return replace(decision, action=KEEP, reasons=[
        f"no measure worse than allowed over {promoted.requests} requests of {promoted.version} and "
        f"{previous.requests} of {previous.version}"])


def decision_table_md(decision: Decision, labels: tuple[str, str] = ("stable", "candidate")) -> str:
    """Stable against candidate (or `labels`), one row per measure."""
    s, c = decision.stable, decision.candidate
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    rows = [("requests", s.requests, c.requests), ("error_rate", s.error_rate, c.error_rate),
            ("latency_p95_ms", s.latency_p95_ms, c.latency_p95_ms), ("toxicity_rate", s.toxicity_rate, c.toxicity_rate),
            ("feedback", s.feedback, c.feedback), ("positive_feedback", s.positive_feedback, c.positive_feedback)]
    return "\n".join([f"| measure | {labels[0]} {s.version} | {labels[1]} {c.version} |", "|---|---:|---:|",
                      *(f"| {name} | {fmt(a)} | {fmt(b)} |" for name, a, b in rows), "",
                      f"**{decision.action}**: " + "; ".join(decision.reasons)])
