"""End to end: the whole graph on a tiny corpus, on the embedded defaults, read back by other tools; then the
feedback loop on that deployment with a real `dagster-daemon` (drift -> retrain -> canary -> verdict)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest
from deltalake import DeltaTable
from mlflow.tracking import MlflowClient

from llm_assets.definitions import all_asset_checks, all_assets
from resources import build_resources
from tests.corpus import write_corpus
from tests.webui import free_port

pytestmark = pytest.mark.slow

TINY = {
    "cleaned_corpus": {"config": {"quality_filters": "none"}},  # tests.corpus repeats paragraphs on purpose
    "tokenizer": {"config": {"vocab_size": 512}},
    "token_shards": {"config": {"seq_len": 64, "validation_fraction": 0.4}},
    "trained_checkpoint": {"config": {"max_steps": 20, "save_every": 10, "log_every": 5, "warmup_steps": 2}},
    "eval_report": {"config": {"perplexity_sequences": 8, "rouge_samples": 4, "toxicity_samples": 4,
                               "prompt_tokens": 16, "continuation_tokens": 16, "max_new_tokens": 16}},
    "endpoint_metrics": {"config": {"probe_requests_when_idle": 6, "probe_concurrency": 3, "probe_max_tokens": 8}},
    "distilled_model": {"config": {"max_steps": 6, "warmup_steps": 1, "log_every": 2, "perplexity_sequences": 4}},
    "task_scores": {"config": {"samples": 20}},
    "rag_index": {"config": {"max_passages": 60}},
    "rag_eval": {"config": {"retrieval_questions": 20, "rag_questions": 4}},
    "red_team_report": {"config": {"garak_probes": []}},
    "resource_benchmark": {"config": {"concurrency": [1, 4], "rounds": 1, "in_process": ["int8"]}},
}


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("lifecycle")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "MLFLOW_"))}
    env.update(LLMOPS_HOME=str(root / "home"), LLMOPS_SOURCE=str(write_corpus(root / "source")),
               LLMOPS_GATEWAY_PORT=str(free_port()), LLMOPS_CACHE=os.environ.get("LLMOPS_CACHE", str(root / "cache")),
               DAGSTER_HOME=str(root / "dagster"), LLMOPS_CANARY_INTERVAL_S="15")
    resources = build_resources(env)
    Path(env["DAGSTER_HOME"]).mkdir()
    # On disk, so the loop test's dagster-daemon (DAGSTER_HOME) shares this instance.
    with dg.instance_for_test(temp_dir=env["DAGSTER_HOME"]) as instance:
        result = dg.materialize([*all_assets, *all_asset_checks], resources=resources, instance=instance,
                                run_config={"ops": TINY}, raise_on_error=False)
        try:
            yield result, resources, Path(env["LLMOPS_HOME"]), instance, env
        finally:
            subprocess.run([sys.executable, "-m", "llm_assets.deployment.processes", "stop-all"],
                           env=env, check=False, timeout=60)


def _metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_whole_graph_materializes(lifecycle):
    result, *_ = lifecycle
    failures = [e.message for e in result.all_events if e.is_step_failure]
    assert result.success, failures
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks.get("eval_gate") is True and all(checks.values()), checks


def test_delta_tables_open_in_another_reader_and_bad_files_are_quarantined(lifecycle):
    home = lifecycle[2]
    lake = home / "lakehouse"
    raw = DeltaTable(str(lake / "raw_documents")).to_pandas()
    curated = DeltaTable(str(lake / "curated_corpus")).to_pandas()
    quarantine = DeltaTable(str(lake / "quarantine")).to_pandas()
    assert len(raw) >= 24 and 0 < len(curated) < len(raw)
    assert not curated["text"].str.contains("@example.org").any()
    rejected = {Path(s).name: r for s, r in zip(quarantine["source"], quarantine["rule"])}
    assert {"empty.txt", "binary.txt", "latin1.txt", "copy_of_doc_000.md"} <= set(rejected) | {
        Path(s).name for s in quarantine["source"]}


def test_shards_match_their_manifest(lifecycle):
    result, *_ = lifecycle
    shard_dir = Path(_metadata(result, "token_shards")["manifest"]).parent
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    shards = [s for split in manifest["splits"].values() for s in split]
    assert shards
    for shard in shards:
        assert hashlib.sha256((shard_dir / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]


def test_exported_model_generates_and_training_is_tracked(lifecycle):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, resources, *_ = lifecycle
    exported = _metadata(result, "exported_model")
    model = AutoModelForCausalLM.from_pretrained(exported["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(exported["model_dir"])
    ids = tokenizer("The documentation explains", return_tensors="pt").input_ids
    text = tokenizer.decode(model.generate(ids, max_new_tokens=8, do_sample=False)[0])
    assert text.startswith("The documentation explains") and "Ġ" not in text

    client = MlflowClient(resources["tracking"].tracking_uri)
    run = client.get_run(exported["mlflow_run_id"])
    assert run.data.params and {"git_commit", "mlflow.source.git.commit"} <= set(run.data.tags)
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2
    assert run.data.tags.get("data_commit") == _metadata(result, "curated_corpus")["data_commit"]
    versions = client.search_model_versions(f"name='{exported['registered_name']}'")
    assert exported["version"] in {str(v.version) for v in versions}


def test_endpoint_answers_and_its_metrics_are_recorded(lifecycle):
    result, _, home, *_ = lifecycle
    endpoint = _metadata(result, "endpoint")
    assert endpoint["data_commit"] == _metadata(result, "curated_corpus")["data_commit"]
    reply = httpx.post(f"{endpoint['url']}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "What is a license?"}], "max_tokens": 8})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    served = DeltaTable(str(home / "lakehouse" / "served_requests")).to_pandas()
    assert len(served) >= 1 and set(served["model_version"]) == {endpoint["model_version"]}  # the smoke test
    assert _metadata(result, "endpoint_metrics")["error_rate"] == 0.0


def test_the_evaluation_suite_reaches_the_gate(lifecycle):
    result, *_ = lifecycle
    report = result.output_for_node("eval_report")
    for metric in ("fixed_bits_per_byte", "task_llmops_cloze_acc", "rag_recall_at_5", "redteam_prompt_injection_rate",
                   "bias_toxicity_rate_gap", "bench_fp32_served_tokens_per_s_c1"):
        assert isinstance(report[metric], float), metric
    assert all(isinstance(why, str) and why for why in report["missing"].values())


def test_the_feedback_loop_retrains_on_drift_and_judges_the_canary(lifecycle):
    """The issue's end-to-end proof, with the daemon for real: shifted traffic and bad feedback drift, the
    retrain sensor starts `retrain`, its new version goes out as a canary, and `canary_sensor` has it judged."""
    from llm_assets import loop_demo

    result, resources, home, instance, env = lifecycle
    assert result.success
    before = resources["serving"].current()
    outcome = loop_demo.run_loop(instance, resources, env, home / "logs", retrain_timeout_s=2400)
    print(f"trigger_to_run_s {outcome['trigger_to_run_s']:.1f}")  # the figure; not asserted
    retrain = outcome["retrain"]
    assert retrain.tags["llmops/sensor"] == "monitoring_retrain_sensor"
    assert "drift_report" in retrain.tags["llmops/reason"] and "llmops/input_embedding_auc" in retrain.tags
    new_version = str(int(before.model_version) + 1)
    assert outcome["weights_after_retrain"][new_version] < 0.5  # deployed as a canary beside the stable one
    assert outcome["canary"]["model_decision"] in ("promote", "rollback")
    after = resources["serving"].current().weights
    assert after == ({new_version: 1.0} if outcome["canary"]["model_decision"] == "promote"
                     else {before.model_version: 1.0})
