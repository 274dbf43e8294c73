"""A run that fails halfway leaves every committed data version readable and unchanged."""

import dagster as dg
import pandas as pd
from deltalake import DeltaTable

from llm_assets.data.assets import cleaned_corpus, curated_corpus, deduped_corpus, raw_documents
from resources.settings import SettingsResource
from tests.corpus import write_corpus

ASSETS = [raw_documents, cleaned_corpus, deduped_corpus, curated_corpus]
NO_FILTERS = {"quality_filters": "none"}  # tests.corpus repeats paragraphs on purpose


def _run(resources, cleaning: dict):
    return dg.materialize(ASSETS, resources=resources, raise_on_error=False,
                          run_config={"ops": {"cleaned_corpus": {"config": cleaning}}})


def test_a_failed_run_leaves_the_committed_versions_intact(llmops_resources, home, tmp_path):
    source = write_corpus(tmp_path / "source", docs=8)
    resources = {**llmops_resources, "settings": SettingsResource(home=str(home), source=str(source))}
    versioning = resources["versioning"]
    assert _run(resources, NO_FILTERS).success
    head = versioning.head()
    pinned = versioning.checkout(head)
    before = {name: DeltaTable(t.uri, version=t.version).to_pandas() for name, t in pinned.items()}

    (source / "new.md").write_text("# New\n\n" + "A new page about the gateway and its replicas. " * 8)
    failed = _run(resources, {**NO_FILTERS, "languages": ["xx"]})  # every document rejected: the step raises
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert failure.step_key == "cleaned_corpus" and "no documents left" in str(failure.step_failure_data.error)

    assert versioning.head() == head and versioning.verify(head) == {}
    for name, table in versioning.checkout(head).items():
        after = DeltaTable(table.uri, version=table.version).to_pandas()
        pd.testing.assert_frame_equal(after, before[name])
    assert DeltaTable(pinned["cleaned_corpus"].uri).version() == pinned["cleaned_corpus"].version
