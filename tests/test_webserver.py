"""The web UI as its users use it: `dagster dev`, the Materialize button's GraphQL call, and a real browser."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.corpus import write_corpus
from tests.webui import DagsterDev

pytestmark = pytest.mark.slow

STAGES = ["raw_documents", "cleaned_corpus", "curated_corpus", "tokenizer", "token_shards",
          "trained_checkpoint", "exported_model", "eval_report", "quantized_model", "endpoint",
          "endpoint_metrics"]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    root = tmp_path_factory.mktemp("webui")
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "DAGSTER_", "MLFLOW_"))}
    env.update(DAGSTER_HOME=str(root / "dagster"), LLMOPS_HOME=str(root / "home"),
               LLMOPS_SOURCE=str(write_corpus(root / "source")))
    server = DagsterDev(env, root / "dagster-dev.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_materialize_button_runs_the_first_data_assets(dagster_dev):
    # tests.corpus repeats paragraphs on purpose, which the quality filters would reject.
    run_id = dagster_dev.materialize("raw_documents", "cleaned_corpus", run_config={
        "ops": {"cleaned_corpus": {"config": {"quality_filters": "none"}}}})
    assert dagster_dev.wait_run(run_id) == "SUCCESS"
    nodes = dagster_dev.graphql(
        '{ assetNodes(assetKeys: [{path: ["cleaned_corpus"]}]) { assetMaterializations(limit: 1) { runId } } }'
    )["assetNodes"]
    assert nodes[0]["assetMaterializations"][0]["runId"] == run_id


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by `make test`")
def test_asset_catalog_shows_every_stage_in_a_browser(dagster_dev, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            page.goto(f"{dagster_dev.url}/assets", wait_until="load")
            page.get_by_text("endpoint_metrics", exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "assets.png"), full_page=True)
            text = page.inner_text("body")
        finally:
            browser.close()
    missing = [name for name in STAGES if name not in text]
    assert not missing, f"asset catalog page lacks {missing}"
