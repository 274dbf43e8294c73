"""Language identification with lingua (`lingua-language-detector`), whose models ship in the wheel.

Lingua's low-accuracy mode (trigram models of 75 languages, ~100 MB, ~1 ms a document) is built once
per process, so each Spark Python worker loads it once. The first `sample_chars` characters decide;
a document is `unknown` when it has too few letters (code listings, tables) or when lingua's best
confidence is under `min_confidence`. Labels are ISO 639-1 codes (`en`, `de`, `ja`, ...).
"""

from __future__ import annotations

from functools import lru_cache

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

UNKNOWN = "unknown"
SAMPLE_CHARS = 2_000
MIN_CONFIDENCE = 0.5
MIN_LETTER_RATIO = 0.4


@lru_cache(maxsize=1)
def _detector():
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def detect_language(text: str | None, sample_chars: int = SAMPLE_CHARS,
                    min_confidence: float = MIN_CONFIDENCE) -> str:
    """An ISO 639-1 code, or `unknown` (see the module docstring)."""
    sample = (text or "")[:sample_chars]
    visible = sum(1 for ch in sample if not ch.isspace())
    if visible == 0 or sum(1 for ch in sample if ch.isalpha()) / visible < MIN_LETTER_RATIO:
        return UNKNOWN
    best = _detector().compute_language_confidence_values(sample)
    if not best or best[0].value < min_confidence:
        return UNKNOWN
    return best[0].language.iso_code_639_1.name.lower()


def _languages(text: pd.Series) -> pd.Series:
    return text.map(detect_language)


def with_language(docs: DataFrame) -> DataFrame:
    """`docs` plus a `language` column."""
    # Made at call time, not import: a UDF made before a Spark Connect session exists is a classic one.
    return docs.withColumn("language", F.pandas_udf(_languages, T.StringType())("text"))
