"""A run tagged `llmops/data_ref` tokenizes the curated corpus of that data commit, not the newest one."""

import json
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.data.assets import cleaned_corpus, curated_corpus, deduped_corpus, raw_documents
from llm_assets.tokens.assets import DATA_REF_TAG, token_shards, tokenizer
from resources.settings import SettingsResource
from resources.versioning import UnknownRefError
from tests.corpus import write_corpus

DATA = [raw_documents, cleaned_corpus, deduped_corpus, curated_corpus]
CONFIG = {"ops": {"cleaned_corpus": {"config": {"quality_filters": "none"}}}}
TOKENS = {"ops": {"tokenizer": {"config": {"vocab_size": 300}},
                  "token_shards": {"config": {"seq_len": 16, "validation_fraction": 0.0}}}}


def test_data_ref_tag_pins_an_old_commit(llmops_resources, home, tmp_path):
    source = write_corpus(tmp_path / "source", docs=8)
    resources = {**llmops_resources, "settings": SettingsResource(home=str(home), source=str(source))}
    versioning = resources["versioning"]
    assert dg.materialize(DATA, resources=resources, run_config=CONFIG).success
    first = versioning.head()
    versioning.tag("v1", first)
    (source / "new.md").write_text("# New\n\n" + "A new page about the gateway and its replicas. " * 8)
    assert dg.materialize(DATA, resources=resources, run_config=CONFIG).success
    assert versioning.head() != first

    result = dg.materialize([*DATA, tokenizer, token_shards], resources=resources,
                            selection=[tokenizer, token_shards], tags={DATA_REF_TAG: "v1"},
                            run_config=TOKENS)
    assert result.success
    (shards,) = result.asset_materializations_for_node("token_shards")
    manifest = json.loads(Path(shards.metadata["manifest"].value).read_text())
    assert manifest["data_commit"] == first
    latest = dg.materialize([*DATA, tokenizer, token_shards], resources=resources,
                            selection=[tokenizer, token_shards], run_config=TOKENS)
    (newest,) = latest.asset_materializations_for_node("token_shards")
    assert newest.metadata["data_commit"].value == versioning.head()

    with pytest.raises(UnknownRefError, match="no-such-tag"):
        dg.materialize([*DATA, tokenizer, token_shards], resources=resources, selection=[tokenizer],
                       tags={DATA_REF_TAG: "no-such-tag"}, run_config={"ops": {"tokenizer": TOKENS["ops"]["tokenizer"]}})
