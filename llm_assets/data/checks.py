"""Quality gates on the data stage: the Great Expectations suite and the quarantine books (both blocking)."""

import json

import dagster as dg

from llm_assets.artifacts import CommittedTable
from llm_assets.data import accounting, expectations, ingest
from llm_assets.data.assets import QUARANTINE, cleaned_corpus, curated_corpus, deduped_corpus, raw_documents
from resources.lakehouse import LakehouseResource
from resources.settings import SettingsResource
from resources.spark import SparkResource


class ExpectationsConfig(dg.Config):
    """Used by: the `<table>_expectations` checks. Bounds match the assets' defaults."""

    min_chars: int = expectations.MIN_CHARS
    max_chars: int = expectations.MAX_CHARS
    max_bytes: int = ingest.MAX_BYTES
    languages: list[str] = ["en"]
    """The kept languages of cleaned_corpus (its `languages` setting); empty: any."""


SUITES = {
    "raw_documents": lambda c: expectations.raw_suite(c.max_bytes),
    "cleaned_corpus": lambda c: expectations.cleaned_suite(tuple(c.languages), c.min_chars, c.max_chars),
    "deduped_corpus": lambda c: expectations.deduped_suite(),
    "curated_corpus": lambda c: expectations.curated_suite(c.min_chars, c.max_chars),
}


def _table(report: expectations.SuiteReport) -> str:
    lines = ["| expectation | passed | unexpected / observed |", "|---|---|---|"]
    for r in report.results:
        seen = r.get("unexpected_count", r.get("observed_value", r.get("exception", "")))
        lines.append(f"| `{r['expectation']}` | {'yes' if r['success'] else '**no**'} | {seen} |")
    return "\n".join(lines)


def expectations_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """A blocking Great Expectations check of `asset`'s newest table version; the full result is saved as JSON."""
    name = asset.key.to_user_string()

    @dg.asset_check(asset=asset, name=f"{name}_expectations", blocking=True,
                    description=f"Great Expectations suite of {name} (llm_assets/data/expectations.py).")
    def _check(config: ExpectationsConfig, settings: SettingsResource, spark: SparkResource,
               lakehouse: LakehouseResource) -> dg.AssetCheckResult:
        table = lakehouse.latest(name)  # the version this run just committed
        report = expectations.validate(lakehouse.read(spark.session(), table), lambda: SUITES[name](config))
        path = settings.path("reports", "gx", f"{name}-v{table.version}.json")
        path.write_text(json.dumps({"table": name, "delta_version": table.version, "success": report.passed,
                                    "rows": report.rows, "results": report.results}, indent=1, default=str))
        return dg.AssetCheckResult(passed=report.passed, metadata={
            "rows": report.rows,
            "expectations": len(report.results),
            "failed": dg.MetadataValue.json(report.failed),
            "results": dg.MetadataValue.md(_table(report)),
            "validation_result": dg.MetadataValue.path(str(path)),
            "delta_version": table.version,
        })

    return _check


raw_documents_expectations, cleaned_corpus_expectations, deduped_corpus_expectations, curated_corpus_expectations = (
    expectations_check(a) for a in (raw_documents, cleaned_corpus, deduped_corpus, curated_corpus))


@dg.asset_check(asset=curated_corpus, blocking=True)
def curated_corpus_accounting(curated_corpus: CommittedTable, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    """Nothing vanishes: every step's input rows = its kept rows + the rows it quarantined."""
    chain = accounting.lineage(lakehouse, curated_corpus.table)
    quarantine = lakehouse.latest(QUARANTINE)
    balances = accounting.step_balances(chain, quarantine.uri if quarantine else None, lakehouse.storage_options())
    unbalanced = [b.asset for b in balances if not b.balanced]
    return dg.AssetCheckResult(passed=bool(balances) and not unbalanced, metadata={
        "steps": dg.MetadataValue.md(accounting.balances_markdown(balances)),
        "unbalanced": dg.MetadataValue.json(unbalanced),
        "rows_in": balances[-1].rows_in if balances else 0,
        "rows_kept": curated_corpus.table.rows,
        "data_commit": curated_corpus.commit_id,
    })
