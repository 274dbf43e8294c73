"""Bias and composition of a corpus version: demographic term counts, toxicity, and plots.

- Demographic terms: whole-word, case-insensitive counts of each group's terms from a small lexicon
  (config; the default compares gendered words), with each group's share of all matches. A skew
  here is a skew the model learns.
- Toxicity: the share of sampled documents that `profanity_check` (alt-profanity-check's linear SVM
  on offensive-language data, shipped in its wheel) scores above a threshold, with a 95% Wilson
  interval, since it is measured on a sample.
- Plots (PNG, matplotlib's Agg backend): documents by source kind and language, the length
  distribution, and histograms of quality scores, for the Dagster UI and for people comparing versions.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

DEFAULT_LEXICON = {
    "female": ["she", "her", "hers", "herself", "woman", "women", "girl", "girls", "mother", "daughter",
               "female", "wife", "sister", "lady", "ladies"],
    "male": ["he", "him", "his", "himself", "man", "men", "boy", "boys", "father", "son", "male",
             "husband", "brother", "gentleman", "gentlemen"],
}


def demographic_counts(docs: DataFrame, lexicon: dict[str, list[str]]) -> dict[str, int]:
    """Matches of each group's terms over all documents (whole words, lowercased)."""
    group_of = {term.lower(): group for group, terms in lexicon.items() for term in terms}
    terms = F.array(*[F.lit(t) for t in group_of])
    words = docs.select(F.explode(F.split(F.lower("text"), r"[^\p{L}\p{N}']+")).alias("word"))
    counts = {r["word"]: r["count"] for r in
              words.where(F.array_contains(terms, F.col("word"))).groupBy("word").count().collect()}
    totals = {group: 0 for group in lexicon}
    for word, n in counts.items():
        totals[group_of[word]] += n
    return totals


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: (v / total if total else 0.0) for k, v in counts.items()}


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate measured as hits / n."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _toxicity_batch(text: pd.Series) -> pd.Series:
    from profanity_check import predict_prob

    return pd.Series(predict_prob(text.fillna("").str.slice(0, 20_000).tolist()), dtype="float64")


def toxicity(docs: DataFrame, sample: int, threshold: float, seed: int = 0) -> dict:
    """Toxicity rate of up to `sample` documents chosen by a hash of doc_id (stable across runs)."""
    picked = docs.orderBy(F.xxhash64(F.lit(seed), "doc_id"), "doc_id").limit(sample)
    # Made at call time, not import: a UDF made before a Spark Connect session exists is a classic one.
    scored = picked.select(F.pandas_udf(_toxicity_batch, T.DoubleType())("text").alias("p")).toPandas()["p"]
    hits, n = int((scored > threshold).sum()), len(scored)
    low, high = wilson_interval(hits, n)
    return {"sampled": n, "toxic": hits, "rate": hits / n if n else 0.0, "ci95": [low, high],
            "threshold": threshold}


def composition_plot(summary: dict, lengths: pd.Series, path: Path) -> Path:
    """Three panels: documents per source kind, per language, and the n_chars histogram (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in ((axes[0], "by_kind", "source kind"), (axes[1], "by_language", "language")):
        items = list(summary[key].items())[:12]
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#4c72b0")
        ax.set_title(f"documents by {title}")
    values = lengths[lengths > 0]
    if len(values):
        bins = np.logspace(np.log10(values.min()), np.log10(values.max() + 1), 30)
        axes[2].hist(values, bins=bins, color="#55a868")
        axes[2].set_xscale("log")
    axes[2].set_title("document length (characters)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def quality_plot(scores: pd.DataFrame, path: Path, log_x: tuple[str, ...] = ("gopher_words",)) -> Path:
    """A histogram per column of `scores` (one row per document; nulls left out), three to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = max(1, math.ceil(len(scores.columns) / 3))
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, scores.columns):
        log = name in log_x
        values = scores[name].dropna()
        values = values[values > 0] if log else values
        if len(values):
            bins = np.logspace(np.log10(values.min()), np.log10(values.max() + 1), 30) if log else 30
            ax.hist(values, bins=bins, color="#c44e52")
        ax.set_xscale("log" if log else "linear")
        ax.set_title(name, fontsize=10)
    for ax in axes.flat[len(scores.columns):]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def image_markdown(path: Path, alt: str) -> str:
    """Markdown that shows the PNG inline in the Dagster UI."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def comparison_markdown(current: dict, previous: dict | None) -> str:
    """A table of the headline numbers of this version beside the previous committed one."""
    rows = [("documents", "documents"), ("characters", "chars"), ("toxicity rate", "toxicity_rate"),
            *[(f"{g} term share", f"share_{g}") for g in current.get("groups", [])],
            *[(f"median {s}", f"median_{s}") for s in current.get("scores", [])]]
    lines = ["| metric | previous | current | change |", "|---|---:|---:|---:|"]
    for label, key in rows:
        now = current.get(key)
        before = previous.get(key) if previous else None
        change = "-" if before is None or now is None else f"{now - before:+.4g}"
        fmt = (lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else f"{v:,}")
        lines.append(f"| {label} | {fmt(before)} | {fmt(now)} | {change} |")
    return "\n".join(lines)
