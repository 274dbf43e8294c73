"""A data branch is merged into main by merged_data_commit only when the curated corpus checks pass."""

import dagster as dg

from llm_assets.data.assets import (CURATED_CHECKS, cleaned_corpus, curated_corpus, deduped_corpus,
                                    merged_data_commit, raw_documents)
from llm_assets.data.checks import curated_corpus_accounting, curated_corpus_expectations
from resources.settings import SettingsResource
from resources.versioning import LocalVersioning
from tests.corpus import write_corpus

ASSETS = [raw_documents, cleaned_corpus, deduped_corpus, curated_corpus, curated_corpus_expectations,
          curated_corpus_accounting, merged_data_commit]
NO_FILTERS = {"cleaned_corpus": {"config": {"quality_filters": "none"}}}


def test_checks_gate_the_merge_of_an_experiment_branch(llmops_resources, home, tmp_path):
    assert {k.name for c in (curated_corpus_expectations, curated_corpus_accounting) for k in c.check_keys} == set(
        CURATED_CHECKS)
    source = write_corpus(tmp_path / "source", docs=8)
    main = llmops_resources["versioning"]
    resources = {**llmops_resources, "settings": SettingsResource(home=str(home), source=str(source))}
    with dg.instance_for_test() as instance:
        assert dg.materialize(ASSETS, resources=resources, instance=instance,
                              run_config={"ops": NO_FILTERS}).success
        main_head = main.head("main")
        experiment = LocalVersioning(root=main.root, branch="experiment")
        on_branch = {**resources, "versioning": experiment}

        strict = {**NO_FILTERS, "curated_corpus_curated_corpus_expectations": {"config": {"max_chars": 10}}}
        failed = dg.materialize(ASSETS, resources=on_branch, instance=instance, run_config={"ops": strict},
                                raise_on_error=False)
        assert not failed.asset_materializations_for_node("merged_data_commit")  # blocked by the failed check
        assert main.head("main") == main_head and experiment.head() != main_head
        assert experiment.get_commit(experiment.head())["parent"] == main_head  # forked from main

        merged = dg.materialize(ASSETS, resources=on_branch, instance=instance, run_config={"ops": NO_FILTERS})
        (event,) = merged.asset_materializations_for_node("merged_data_commit")
        assert event.metadata["merged"].value is True
        assert main.head("main") == experiment.head() != main_head
        assert main.checkout("main") == experiment.checkout("experiment")
