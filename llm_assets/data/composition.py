"""What the curated corpus is made of: a language label per document and a composition summary.

Language is a light heuristic, not a model (no dependency, deterministic, fast): the dominant Unicode
script decides for non-Latin text (`ja` when kana appear, `zh` for Han alone, `ko`, `ru` for
Cyrillic, `el`, `ar`, `he`, `hi`, `th`); Latin text is labelled with the language whose common
function words make up the largest share of its first 2,000 words, if that share is at least 5%
(and at least 3 words), else `unknown` (code listings, tables, word lists). Good enough to see the mix of a corpus; not a
substitute for a trained identifier such as fastText's lid.176 on web text.
"""

from __future__ import annotations

import re
import unicodedata

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from llm_assets.data.pii import COUNT_COLUMNS, scrub_documents

_STOPWORDS = {
    "en": "the of and a to in is that for it with as on are this be by or from an not can you which if we",
    "de": "der die und das ist nicht ein eine zu den mit sich des auf für im dem von werden oder auch",
    "fr": "le la les de des et est une un du que pour dans pas qui sur au avec sont ce ou",
    "es": "el la los las de que y en un una es por con para del se no al como más lo",
    "it": "il la di che e per un una sono del della non con si gli le da al nel",
    "pt": "o a os as de que e do da em um uma para com não por se no na dos",
    "nl": "de het een en van is dat op te in voor niet met zijn ook aan er als",
}
_STOPWORDS = {lang: set(words.split()) for lang, words in _STOPWORDS.items()}
_WORD = re.compile(r"[^\W\d_]+")
_SCRIPTS = [  # (unicodedata name prefix, label)
    ("HIRAGANA", "ja"), ("KATAKANA", "ja"), ("CJK", "zh"), ("HANGUL", "ko"), ("CYRILLIC", "ru"),
    ("GREEK", "el"), ("ARABIC", "ar"), ("HEBREW", "he"), ("DEVANAGARI", "hi"), ("THAI", "th"),
]


def detect_language(text: str, sample_chars: int = 20_000) -> str:
    """An ISO 639-1 code, or `unknown` (see the module docstring for how it is guessed)."""
    sample = text[:sample_chars]
    letters = [ch for ch in sample if ch.isalpha()]
    if not letters:
        return "unknown"
    scripts: dict[str, int] = {}
    latin = 0
    for ch in letters:
        if ch.isascii():
            latin += 1
            continue
        name = unicodedata.name(ch, "")
        if name.startswith("LATIN"):
            latin += 1
            continue
        for prefix, label in _SCRIPTS:
            if name.startswith(prefix):
                scripts[label] = scripts.get(label, 0) + 1
                break
    non_latin = sum(scripts.values())
    if non_latin > latin:
        if scripts.get("ja"):
            return "ja"
        return max(scripts, key=lambda k: (scripts[k], k))
    words = [w.lower() for w in _WORD.findall(sample)][:2000]
    if not words:
        return "unknown"
    hits = {lang: sum(w in stops for w in words) for lang, stops in _STOPWORDS.items()}
    best = max(hits, key=lambda k: (hits[k], k))
    return best if hits[best] >= 3 and hits[best] / len(words) >= 0.05 else "unknown"


@F.pandas_udf(T.StringType())
def _language_udf(text: pd.Series) -> pd.Series:
    return text.map(detect_language)


def with_language(docs: DataFrame) -> DataFrame:
    """`docs` plus a `language` column."""
    return docs.withColumn("language", _language_udf("text"))


CURATED_COLUMNS = ["doc_id", "source", "kind", "language", "text", "n_chars", "n_words", "content_hash",
                   "text_hash", *COUNT_COLUMNS]


def curate_documents(docs: DataFrame) -> DataFrame:
    """Deduplicated documents with PII scrubbed, lengths recounted and a language label."""
    scrubbed = with_language(scrub_documents(docs))
    return scrubbed.select(
        *[F.length("text").cast("long").alias("n_chars") if c == "n_chars"
          else F.size(F.split(F.trim("text"), r"\s+")).cast("long").alias("n_words") if c == "n_words"
          else F.col(c) for c in CURATED_COLUMNS])


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
