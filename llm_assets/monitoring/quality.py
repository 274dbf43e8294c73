"""Output quality of live traffic: a sample of logged requests scored, joined with the users' feedback.

Scores reuse the evaluation stage's code: toxicity from profanity_check (`metrics.toxicity_probabilities`),
hallucination as the share of answer claims whose content words the retrieved passages do not support
(`rag_answers.unsupported_claims`, only for rows that logged their `context`), refusals by the red team's
refusal pattern, PII leaks by the data stage's scrubber (`pii.scrub`), and response length.

The sample is chosen by a hash of the request id, so it is the same whichever run scores it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from llm_assets.data import pii
from llm_assets.evaluation.metrics import toxicity_probabilities
from llm_assets.evaluation.rag_answers import unsupported_claims
from llm_assets.evaluation.red_team import REFUSAL


def sampled(request_id: str, fraction: float, seed: int = 0) -> bool:
    """True for about `fraction` of request ids, the same ids on every call."""
    h = int(hashlib.sha256(f"{seed}:{request_id}".encode()).hexdigest()[:8], 16) / 2**32
    return h < fraction


def sample(rows: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """The answered requests (status 200) in the sample."""
    if not 0 < fraction <= 1:
        raise ValueError(f"sample fraction must be in (0, 1], got {fraction}")
    if rows.empty:
        return rows
    ok = rows[rows["status"] == 200]
    return ok[[sampled(r, fraction, seed) for r in ok["request_id"]]].reset_index(drop=True)


def _passages(context: str) -> list[str] | None:
    if not context:
        return None
    try:
        value = json.loads(context)
    except json.JSONDecodeError:
        return [context]
    return [str(p) for p in value] if isinstance(value, list) else [str(value)]


def score(rows: pd.DataFrame, toxicity_threshold: float = 0.5) -> pd.DataFrame:
    """One score row per request: toxicity, hallucination (None without context), refusal, length, PII."""
    responses = rows["response"].fillna("").tolist()
    toxicity = toxicity_probabilities(responses)
    out = []
    for row, text, tox in zip(rows.itertuples(index=False), responses, toxicity):
        passages = _passages(row.context)
        claims, unsupported = unsupported_claims(text, passages) if passages else (0, 0)
        pii_counts = pii.scrub(text)[1]
        out.append({
            "request_id": row.request_id, "timestamp": row.timestamp, "model": row.model,
            "model_version": row.model_version, "prompt_version": row.prompt_version,
            "toxicity": tox, "toxic": tox > toxicity_threshold,
            "hallucination": unsupported / claims if claims else None,
            "refusal": bool(REFUSAL.search(text)), "response_chars": len(text), "response_words": len(text.split()),
            "pii_found": sum(pii_counts.values()),
            "pii_types": ",".join(k for k, v in pii_counts.items() if v),
        })
    return pd.DataFrame(out)


def latest_feedback(feedback: pd.DataFrame) -> pd.DataFrame:
    """The newest feedback per request id (rating, thumbs, comment)."""
    if feedback.empty:
        return pd.DataFrame(columns=["request_id", "rating", "thumbs", "comment"])
    newest = feedback.sort_values("timestamp").groupby("request_id").tail(1)
    return newest[["request_id", "rating", "thumbs", "comment"]].reset_index(drop=True)


def join_feedback(scores: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """`scores` with each request's newest rating, thumbs and comment (NaN/None where there is none)."""
    return scores.merge(latest_feedback(feedback), on="request_id", how="left")


def _rate(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.astype(float).mean()) if len(values) else float("nan")


def summarize(scored: pd.DataFrame, feedback: pd.DataFrame) -> dict:
    """Rates over the scored sample, and over all feedback received so far."""
    fb = latest_feedback(feedback)
    thumbs = fb["thumbs"].replace("", None).dropna()
    ratings = pd.to_numeric(fb["rating"], errors="coerce").dropna()
    return {
        "sampled": int(len(scored)),
        "toxicity_rate": _rate(scored["toxic"]) if len(scored) else float("nan"),
        "hallucination_rate": _rate(scored["hallucination"]) if len(scored) else float("nan"),
        "with_context": int(scored["hallucination"].notna().sum()) if len(scored) else 0,
        "refusal_rate": _rate(scored["refusal"]) if len(scored) else float("nan"),
        "pii_leak_rate": _rate(scored["pii_found"] > 0) if len(scored) else float("nan"),
        "response_chars_mean": _rate(scored["response_chars"]) if len(scored) else float("nan"),
        "feedback": int(len(fb)),
        "thumbs_up_rate": float((thumbs == "up").mean()) if len(thumbs) else float("nan"),
        "mean_rating": float(ratings.mean()) if len(ratings) else float("nan"),
        "negative_feedback_rate": float(np.mean([negative(r, t) for r, t in zip(fb["rating"], fb["thumbs"])]))
        if len(fb) else float("nan"),
    }


def negative(rating, thumbs) -> bool:
    """Feedback counts as negative when thumbs are down or the rating is 1 or 2."""
    return thumbs == "down" or (pd.notna(rating) and float(rating) <= 2)


def positive(rating, thumbs) -> bool:
    """Feedback counts as good when thumbs are up (and no rating below 4), or the rating is 4 or 5."""
    rated = pd.notna(rating)
    return (thumbs == "up" and not (rated and float(rating) < 4)) or (rated and float(rating) >= 4
                                                                      and thumbs != "down")


def quality_verdict(summary: dict, limits: dict[str, float]) -> tuple[bool, list[str]]:
    """Rates over their limits ({"toxicity_rate": 0.05, ...}); a NaN rate (nothing sampled) is no breach."""
    breaches = [f"{k} {summary[k]:.3f} > {v}" for k, v in limits.items()
                if k in summary and summary[k] == summary[k] and summary[k] > v]
    return not breaches, breaches


def review_samples(scored: pd.DataFrame, rows: pd.DataFrame) -> dict[tuple[str, str], list[dict]]:
    """Sampled items for the human-review queue, grouped by (model, model_version)."""
    by_id = rows.set_index("request_id")
    out: dict[tuple[str, str], list[dict]] = {}
    for s in scored.itertuples(index=False):
        r = by_id.loc[s.request_id]
        flags = [n for n, on in (("toxic", s.toxic), ("refusal", s.refusal), ("pii", s.pii_found > 0)) if on]
        out.setdefault((s.model, s.model_version), []).append({
            "kind": "live" + (f":{'+'.join(flags)}" if flags else ""), "prompt": r["prompt"],
            "output": r["response"], "reference": f"request_id={s.request_id}"})
    return out
