"""Quality-score distributions of a corpus: the statistics the Gopher and FineWeb filters judge
(`filters.quality_scores`), kept as numbers per document on Spark, then summed up as quantiles.

A score with nothing to measure in a document (a mean word length without words) is null there and
left out of its quantiles.
"""

from __future__ import annotations

from typing import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from llm_assets.data.filters import SCORES, quality_scores

QUANTILES = (0.1, 0.5, 0.9)
PLOTTED = ("gopher_words", "gopher_mean_word_length", "gopher_alpha_words_ratio", "gopher_stop_words",
           "gopher_rep_dup_line_char_frac", "gopher_rep_top_2_gram")
"""The scores drawn as histograms: length, word shape, stop words and the two commonest repetition drops."""

_SCHEMA = T.StructType([T.StructField("doc_id", T.StringType()),
                        *[T.StructField(name, T.DoubleType()) for name in SCORES]])


def _score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        scores = pd.DataFrame([quality_scores(t or "") for t in batch["text"]], columns=list(SCORES), dtype="float64")
        yield pd.concat([batch["doc_id"].astype(str).reset_index(drop=True), scores], axis=1)


def score_documents(docs: DataFrame, sample: int = 0, seed: int = 0) -> DataFrame:
    """doc_id and one double column per score (`filters.SCORES`; null where undefined), for every document,
    or for `sample` documents chosen by a hash of doc_id (the same ones each run) when `sample` > 0."""
    if sample > 0:
        docs = docs.orderBy(F.xxhash64(F.lit(seed), "doc_id"), "doc_id").limit(sample)
    return docs.select(F.col("doc_id").cast("string").alias("doc_id"), "text").mapInPandas(_score_batches, _SCHEMA)


def score_quantiles(scores: DataFrame) -> dict[str, dict[str, float | None]]:
    """{score: {p10, p50, p90}} of a `score_documents` frame (None where no document has the score)."""
    row = scores.agg(*[F.percentile_approx(name, list(QUANTILES), 10_000).alias(name) for name in SCORES]).first()
    return {name: dict(zip((f"p{int(q * 100)}" for q in QUANTILES), row[name] or [None] * len(QUANTILES)))
            for name in SCORES}


def summarize_quality(docs: DataFrame, sample: int = 0) -> tuple[dict, pd.DataFrame]:
    """({documents scored, sample, quantiles}, the `PLOTTED` scores of each scored document)."""
    scores = score_documents(docs, sample).persist()
    try:
        summary = {"documents": scores.count(), "sample": sample, "quantiles": score_quantiles(scores)}
        return summary, scores.select(*PLOTTED).toPandas()
    finally:
        scores.unpersist()


def headline(summary: dict) -> dict:
    """The median of each score, as `median_<score>`, and the list of scores (for `bias.comparison_markdown`)."""
    return {"scores": list(summary["quantiles"]),
            **{f"median_{name}": q["p50"] for name, q in summary["quantiles"].items()}}


def quality_markdown(summary: dict) -> str:
    """The quantiles as a Markdown table, under a line saying which documents were scored."""
    scored = (f"all {summary['documents']:,} documents" if not summary["sample"] else
              f"{summary['documents']:,} documents sampled by a hash of doc_id (quality_sample {summary['sample']:,})")
    names = [f"p{int(q * 100)}" for q in QUANTILES]
    lines = [f"Quality scores (the statistics the Gopher and FineWeb filters judge) of {scored}", "",
             "| score | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| `{name}` | " + " | ".join("-" if q[p] is None else f"{q[p]:.4g}" for p in names) + " |"
              for name, q in summary["quantiles"].items()]
    return "\n".join(lines)
