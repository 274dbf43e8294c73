"""Quality gates on the data stage: the Great Expectations suite and the quarantine books (both blocking)."""

import dagster as dg

from llm_assets.artifacts import CommittedTable
from llm_assets.data import accounting, expectations
from llm_assets.data.assets import QUARANTINE, curated_corpus
from resources.lakehouse import LakehouseResource
from resources.spark import SparkResource


class CorpusExpectationsConfig(dg.Config):
    """Used by: curated_corpus_expectations."""

    min_chars: int = expectations.MIN_CHARS
    max_chars: int = expectations.MAX_CHARS


def _table(report: expectations.SuiteReport) -> str:
    lines = ["| expectation | passed | unexpected / observed |", "|---|---|---|"]
    for r in report.results:
        seen = r.get("unexpected_count", r.get("observed_value", r.get("exception", "")))
        lines.append(f"| `{r['expectation']}` | {'yes' if r['success'] else '**no**'} | {seen} |")
    return "\n".join(lines)


@dg.asset_check(asset=curated_corpus, blocking=True)
def curated_corpus_expectations(config: CorpusExpectationsConfig, curated_corpus: CommittedTable,
                                spark: SparkResource, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    """Great Expectations: columns exist, doc_id non-null and unique, text non-null, n_chars in bounds, no e-mail."""
    df = lakehouse.read(spark.session(), curated_corpus.table)
    report = expectations.validate_corpus(df, config.min_chars, config.max_chars)
    return dg.AssetCheckResult(passed=report.passed, metadata={
        "rows": report.rows,
        "expectations": len(report.results),
        "failed": dg.MetadataValue.json(report.failed),
        "results": dg.MetadataValue.md(_table(report)),
        "details": dg.MetadataValue.json(report.results),
        "min_chars": config.min_chars,
        "max_chars": config.max_chars,
        "delta_version": curated_corpus.table.version,
        "data_commit": curated_corpus.commit_id,
    })


@dg.asset_check(asset=curated_corpus, blocking=True)
def curated_corpus_accounting(curated_corpus: CommittedTable, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    """Nothing vanishes: every step's input rows = its kept rows + the rows it quarantined."""
    chain = accounting.lineage(lakehouse, curated_corpus.table)
    quarantine = lakehouse.latest(QUARANTINE)
    balances = accounting.step_balances(chain, quarantine.uri if quarantine else None)
    unbalanced = [b.asset for b in balances if not b.balanced]
    return dg.AssetCheckResult(passed=bool(balances) and not unbalanced, metadata={
        "steps": dg.MetadataValue.md(accounting.balances_markdown(balances)),
        "unbalanced": dg.MetadataValue.json(unbalanced),
        "rows_in": balances[-1].rows_in if balances else 0,
        "rows_kept": curated_corpus.table.rows,
        "data_commit": curated_corpus.commit_id,
    })
