"""Text cleaning and quality rules: ftfy, markup stripped (HTML main text by trafilatura), Unicode NFC,
whitespace normalized, language identified and filtered.

Each rule is a threshold on a simple statistic, in the spirit of the Gopher rules (Rae et al. 2021)
as datatrove implements them, loosened for a corpus of software documentation (code blocks, URLs,
license texts):

| rule             | statistic                                               | default     | Gopher   |
|------------------|---------------------------------------------------------|-------------|----------|
| `empty`          | nothing left after cleaning                             | -           | -        |
| `too_few_words`  | whitespace-separated words                              | < 20        | < 50     |
| `too_many_words` | whitespace-separated words                              | > 200,000   | > 100k   |
| `symbol_ratio`   | non-alphanumeric, non-space share of visible characters | > 0.30      | (# 0.1)  |
| `alpha_words`    | share of words at least half letters (`1.5e+00`: no)    | < 0.50      | < 0.80   |
| `word_length`    | mean word length                                        | > 15 chars  | > 10     |
| `repeated_lines` | share of non-blank lines that repeat an earlier line    | > 0.75      | > 0.30   |
| `language`       | lingua's label (llm_assets/data/language.py)            | not kept    | -        |

`clean_text` and `quality_rule` are plain functions; `clean_documents` runs them in a pandas UDF.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

import ftfy
import pandas as pd
import trafilatura
from bs4 import BeautifulSoup
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from llm_assets.data.ingest import StepResult, quarantine_rows
from llm_assets.data.language import detect_language


@dataclass(frozen=True)
class QualityRules:
    """Thresholds of the quality rules (see the module docstring)."""

    min_words: int = 20
    max_words: int = 200_000
    max_symbol_ratio: float = 0.30
    min_alpha_word_ratio: float = 0.50
    max_mean_word_length: float = 15.0
    max_repeated_line_ratio: float = 0.75


# ---------------------------------------------------------------- markup

_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_MD_RULES = [
    (re.compile(r"^\s*(```|~~~).*$", re.M), ""),                      # code fences (the code stays)
    (re.compile(r"^\s{0,3}\[[^\]]+\]:\s*\S+.*$", re.M), ""),           # link reference definitions
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),                   # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),                    # links -> link text
    (re.compile(r"^\s{0,3}#{1,6}\s+", re.M), ""),                     # ATX headings
    (re.compile(r"^\s{0,3}>\s?", re.M), ""),                          # block quotes
    (re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$", re.M), ""),        # horizontal rules
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),            # bold
    (re.compile(r"`([^`\n]+)`"), r"\1"),                              # inline code
]
_RST_RULES = [
    (re.compile(r"^\s*\.\.\s+[\w:|-]+[\w| -]*::.*$", re.M), ""),      # directives (their body stays)
    (re.compile(r"^\.\.\s+(_[^:]+:|\[[^\]]+\]|\|[^|]+\|).*$", re.M), ""),  # targets, footnotes, substitutions
    (re.compile(r"`([^`<]+?)\s*<[^>]+>`__?"), r"\1"),                 # `text <url>`_
    (re.compile(r":[\w:+.-]+:`([^`<]+?)(?:\s*<[^>]+>)?`"), r"\1"),    # :role:`text <target>`
    (re.compile(r"``([^`]+)``"), r"\1"),                              # ``literal``
    (re.compile(r"`([^`]+)`_"), r"\1"),                               # `reference`_
    (re.compile(r"^([=\-~^\"'`#*+<>:._])\1{2,}\s*$", re.M), ""),      # section adornments
]
# METADATA is an e-mail style header followed by the long description; keep the readable fields.
_METADATA_KEEP = ("Name:", "Summary:", "Author:", "Author-email:", "Maintainer:", "Maintainer-email:",
                  "Home-page:", "Keywords:", "License:")


def strip_html(text: str) -> str:
    """The page's main text (trafilatura drops navigation, headers and footers); all visible text when
    trafilatura finds no main content (short pages, API references)."""
    main = trafilatura.extract(text, include_comments=False, include_tables=True, favor_recall=True)
    if main:
        return main
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    return soup.get_text("\n")


def strip_inline_html(text: str) -> str:
    """Inline tags in Markdown (badges, <p align=...>); a bare `a < b` is left alone."""
    return _HTML_TAG.sub("", _HTML_COMMENT.sub("", text))


def strip_markdown(text: str) -> str:
    text = strip_inline_html(text)
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return text


def strip_rst(text: str) -> str:
    for pattern, repl in _RST_RULES:
        text = pattern.sub(repl, text)
    return text


def strip_package_metadata(text: str) -> str:
    header, sep, body = text.partition("\n\n")
    kept = [line for line in header.splitlines() if line.startswith(_METADATA_KEEP)]
    return "\n".join(kept) + sep + strip_rst(strip_markdown(body))


_STRIPPERS = {"html": strip_html, "md": strip_markdown, "rst": strip_rst, "metadata": strip_package_metadata}


def strip_markup(text: str, kind: str) -> str:
    """Markup removed according to the document's kind (plain text and licenses are left as they are)."""
    return _STRIPPERS.get(kind, lambda t: t)(text)


# ---------------------------------------------------------------- normalization

_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Runs of spaces and tabs become one space, lines are trimmed, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def clean_text(text: str, kind: str = "txt") -> str:
    """ftfy repairs (mojibake, HTML entities), markup stripped, Unicode NFC, whitespace normalized."""
    text = ftfy.fix_text(text)
    text = strip_markup(text, kind)
    return normalize_whitespace(unicodedata.normalize("NFC", text))


# ---------------------------------------------------------------- quality rules

def quality_rule(text: str, rules: QualityRules = QualityRules()) -> tuple[str, str] | None:
    """The first rule `text` breaks, as (rule, reason with the measured value), or None if it passes."""
    words = text.split()
    n = len(words)
    if n == 0:
        return "empty", "no text left after cleaning"
    if n < rules.min_words:
        return "too_few_words", f"{n} words < min_words {rules.min_words}"
    if n > rules.max_words:
        return "too_many_words", f"{n} words > max_words {rules.max_words}"
    visible = sum(len(w) for w in words)
    symbols = sum(1 for ch in text if not ch.isalnum() and not ch.isspace())
    if symbols / visible > rules.max_symbol_ratio:
        return "symbol_ratio", f"symbol ratio {symbols / visible:.3f} > max_symbol_ratio {rules.max_symbol_ratio}"
    alpha = sum(1 for w in words if 2 * sum(ch.isalpha() for ch in w) >= len(w)) / n
    if alpha < rules.min_alpha_word_ratio:
        return "alpha_words", f"alphabetic word ratio {alpha:.3f} < min_alpha_word_ratio {rules.min_alpha_word_ratio}"
    if visible / n > rules.max_mean_word_length:
        return "word_length", f"mean word length {visible / n:.1f} > max_mean_word_length {rules.max_mean_word_length}"
    lines = [line for line in text.split("\n") if line.strip()]
    repeated = (len(lines) - len(set(lines))) / len(lines)
    if repeated > rules.max_repeated_line_ratio:
        return "repeated_lines", (f"repeated line ratio {repeated:.3f} > max_repeated_line_ratio "
                                  f"{rules.max_repeated_line_ratio}")
    return None


def clean_and_judge(text: str, kind: str, rules: QualityRules = QualityRules(),
                    languages: tuple[str, ...] = ()) -> tuple[str, int, str, str | None, str | None]:
    """(cleaned text, word count, language, rule or None, reason or None) for one document.

    `languages`: the ISO 639-1 codes to keep (`unknown` included if listed); empty keeps every language.
    """
    cleaned = clean_text(text, kind)
    verdict = quality_rule(cleaned, rules)
    lang = detect_language(cleaned)
    if verdict is None and languages and lang not in languages:
        verdict = ("language", f"language {lang} not in kept languages {list(languages)}")
    rule, reason = verdict if verdict else (None, None)
    return cleaned, len(cleaned.split()), lang, rule, reason


# ---------------------------------------------------------------- on Spark

_CLEANED = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("n_words", T.LongType()),
    T.StructField("language", T.StringType()),
    T.StructField("rule", T.StringType()),
    T.StructField("reason", T.StringType()),
])

CLEANED_COLUMNS = ["doc_id", "source", "kind", "language", "text", "content_hash", "n_chars", "n_words"]


def clean_documents(raw: DataFrame, rules: QualityRules = QualityRules(),
                    languages: tuple[str, ...] = ()) -> StepResult:
    """Clean every document of `raw`; rule breakers go to the quarantine shape with the rule's name."""
    thresholds = asdict(rules)
    kept_languages = tuple(languages)

    @F.pandas_udf(_CLEANED)
    def clean_udf(text: pd.Series, kind: pd.Series) -> pd.DataFrame:
        rules_ = QualityRules(**thresholds)
        rows = [clean_and_judge(t, k, rules_, kept_languages) for t, k in zip(text, kind)]
        return pd.DataFrame(rows, columns=["text", "n_words", "language", "rule", "reason"])

    extra = [c for c in raw.columns if c not in {"doc_id", "source", "kind", "text", "content_hash"}]
    judged = (
        raw.select("doc_id", "source", "kind", "content_hash", *extra, F.col("text").alias("raw_text"),
                   clean_udf("text", "kind").alias("c"))
        .select("doc_id", "source", "kind", "content_hash", *extra, "raw_text", "c.*")
        .persist()
    )
    kept = judged.where(F.col("rule").isNull()).select(
        "doc_id", "source", "kind", "language", "text", "content_hash",
        F.length("text").cast("long").alias("n_chars"), "n_words",
        *[c for c in extra if c not in {"n_bytes", "ingested_at"}],
    )
    rejected = quarantine_rows(judged.where(F.col("rule").isNotNull()), "cleaned_corpus", "rule", "reason",
                               text=F.when(F.length("text") > 0, F.col("text")).otherwise(F.col("raw_text")))
    return StepResult(kept, rejected, (judged,))
