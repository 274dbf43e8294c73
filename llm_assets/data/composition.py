"""What the curated corpus is made of: PII scrubbed, and a composition summary of sources, languages, lengths."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llm_assets.data.pii import COUNT_COLUMNS, scrub_documents


def curate_documents(docs: DataFrame) -> DataFrame:
    """Deduplicated documents with PII scrubbed, lengths recounted, and a `pii_<type>` count per type."""
    scrubbed = scrub_documents(docs)
    recount = {"n_chars": F.length("text").cast("long"),
               "n_words": F.size(F.split(F.trim("text"), r"\s+")).cast("long")}
    return scrubbed.select(*[recount[c].alias(c) if c in recount else F.col(c) for c in docs.columns],
                           *COUNT_COLUMNS)


QUANTILES = (0.1, 0.5, 0.9, 0.99)


def summarize(docs: DataFrame) -> dict:
    """Documents per source kind and per language, and n_chars quantiles, of a curated frame."""
    by_kind = {r["kind"]: r["count"] for r in docs.groupBy("kind").count().collect()}
    by_language = {r["language"]: r["count"] for r in docs.groupBy("language").count().collect()}
    stats = docs.agg(
        F.count("*").alias("documents"),
        F.coalesce(F.sum("n_chars"), F.lit(0)).alias("chars"),
        F.min("n_chars").alias("min"),
        F.max("n_chars").alias("max"),
        F.percentile_approx("n_chars", list(QUANTILES), 10_000).alias("q"),
    ).first()
    quantiles = {"min": stats["min"], **{f"p{int(q * 100)}": v for q, v in zip(QUANTILES, stats["q"] or [])},
                 "max": stats["max"]}
    return {"documents": int(stats["documents"]), "chars": int(stats["chars"]),
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_language": dict(sorted(by_language.items(), key=lambda kv: (-kv[1], kv[0]))),
            "n_chars_quantiles": quantiles}


def composition_markdown(summary: dict) -> str:
    """The summary as Markdown tables for the Dagster UI."""
    total = summary["documents"] or 1
    lines = [f"**{summary['documents']:,} documents, {summary['chars']:,} characters**", "",
             "| source kind | documents | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {n:,} | {n / total:.1%} |" for k, n in summary["by_kind"].items()]
    lines += ["", "| language | documents | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {n:,} | {n / total:.1%} |" for k, n in summary["by_language"].items()]
    lines += ["", "| n_chars | " + " | ".join(summary["n_chars_quantiles"]) + " |",
              "|---|" + "---:|" * len(summary["n_chars_quantiles"]),
              "| value | " + " | ".join(f"{v:,}" if v is not None else "-"
                                         for v in summary["n_chars_quantiles"].values()) + " |"]
    return "\n".join(lines)
