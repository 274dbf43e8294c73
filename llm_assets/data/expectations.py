"""Great Expectations suites, one per corpus table, and the plain function that runs them.

`validate` builds an ephemeral GX context (nothing written to disk), validates a Spark or pandas
DataFrame against a table's suite and returns a `SuiteReport`; the asset checks in `checks.py`
only turn that report into an `AssetCheckResult`.

| table            | expectations beyond "columns exist, at least one row"                             |
|------------------|------------------------------------------------------------------------------------|
| raw_documents    | doc_id non-null and unique, content_hash non-null, n_bytes in [1, max_bytes]        |
| cleaned_corpus   | doc_id unique, n_chars in bounds, language in the kept set                          |
| deduped_corpus   | doc_id unique, text_hash unique (no exact duplicate left)                          |
| curated_corpus   | doc_id unique, text non-null, n_chars in bounds, no e-mail left, PII counts >= 0    |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from llm_assets.data.pii import COUNT_COLUMNS, EMAIL_REGEX

REQUIRED_COLUMNS = ("doc_id", "source", "text", "n_chars", "language")
MIN_CHARS = 1
MAX_CHARS = 2_000_000
MAX_BYTES = 2_000_000
TABLES = ("raw_documents", "cleaned_corpus", "deduped_corpus", "curated_corpus")


def _columns_and_ids(name: str, columns: tuple[str, ...]) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name)
    for column in columns:
        suite.add_expectation(gxe.ExpectColumnToExist(column=column))
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="doc_id"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="doc_id"))
    return suite


def raw_suite(max_bytes: int = MAX_BYTES) -> gx.ExpectationSuite:
    suite = _columns_and_ids("raw_documents", ("doc_id", "source", "text", "content_hash", "n_bytes"))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="content_hash"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_bytes", min_value=1, max_value=max_bytes))
    return suite


def cleaned_suite(languages: tuple[str, ...] = (), min_chars: int = MIN_CHARS,
                  max_chars: int = MAX_CHARS) -> gx.ExpectationSuite:
    suite = _columns_and_ids("cleaned_corpus", REQUIRED_COLUMNS)
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_chars", min_value=min_chars, max_value=max_chars))
    if languages:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="language", value_set=list(languages)))
    return suite


def deduped_suite() -> gx.ExpectationSuite:
    suite = _columns_and_ids("deduped_corpus", (*REQUIRED_COLUMNS, "text_hash"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="text_hash"))
    return suite


def corpus_suite(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> gx.ExpectationSuite:
    """Columns exist, doc_id present and unique, text present, n_chars in bounds, no e-mail left."""
    suite = _columns_and_ids("curated_corpus", REQUIRED_COLUMNS)
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="text"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_chars", min_value=min_chars, max_value=max_chars))
    # The same pattern the scrubber replaces; it means the same in Python's re and Java's regex.
    suite.add_expectation(gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=EMAIL_REGEX))
    return suite


def curated_suite(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> gx.ExpectationSuite:
    """The corpus suite plus a non-negative count column per PII type."""
    suite = corpus_suite(min_chars, max_chars)
    for column in COUNT_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0))
    return suite


@dataclass
class SuiteReport:
    """Outcome of one validation: overall pass, one entry per expectation, and the row count."""

    passed: bool
    rows: int
    results: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [r["expectation"] for r in self.results if not r["success"]]


def _summary(result) -> dict:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
    target = kwargs.get("column", "table")
    out = {"expectation": f"{cfg.type}({target})", "success": bool(result.success), "kwargs": kwargs}
    res = result.result or {}
    for key in ("observed_value", "element_count", "unexpected_count", "unexpected_percent"):
        if res.get(key) is not None:
            out[key] = res[key]
    if res.get("partial_unexpected_list"):
        out["examples"] = [str(v)[:80] for v in res["partial_unexpected_list"][:3]]
    exc = (result.exception_info or {}) if hasattr(result, "exception_info") else {}
    if exc.get("raised_exception"):
        out["exception"] = str(exc.get("exception_message"))[:300]
    return out


def validate(df, make_suite: Callable[[], gx.ExpectationSuite]) -> SuiteReport:
    """Validate a Spark or pandas DataFrame against the suite `make_suite()` builds (GX needs its
    context to exist before an expectation suite is made)."""
    context = gx.get_context(mode="ephemeral")
    suite = make_suite()
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if isinstance(df, pd.DataFrame):
        source = context.data_sources.add_pandas("corpus")
        rows = len(df)
    else:
        source = context.data_sources.add_spark("corpus")
        rows = df.count()
    batch_def = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe("all")
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    validation = batch.validate(suite)
    results = [_summary(r) for r in validation.results]
    return SuiteReport(passed=bool(validation.success), rows=rows, results=results)


def validate_corpus(df, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> SuiteReport:
    """Validate a curated corpus (Spark or pandas DataFrame) against `corpus_suite`."""
    return validate(df, lambda: corpus_suite(min_chars, max_chars))
