"""End to end on the real graph: curated_corpus (a tiny Delta table) → tokenizer → token_shards →
model_catalog → base_model → trained_checkpoint (torchrun + DeepSpeed, 2 processes) → exported_model."""

import json
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_assets.artifacts import CommittedTable
from llm_assets.tokens.assets import token_shards, tokenizer
from llm_assets.training.assets import base_model, exported_model, model_catalog, trained_checkpoint
from tests.tokens.sample import write_corpus

RUN_CONFIG = {"ops": {
    "tokenizer": {"config": {"vocab_size": 512}},
    "token_shards": {"config": {"seq_len": 32, "sequences_per_shard": 64, "validation_fraction": 0.1}},
    "trained_checkpoint": {"config": {"max_steps": 6, "save_every": 3, "micro_batch_size": 4, "log_every": 2}},
}}


@pytest.fixture
def materialized(llmops_resources, spark):
    table = write_corpus(spark, llmops_resources["lakehouse"], n_docs=200)

    @dg.asset(name="curated_corpus", group_name="data")
    def curated_corpus() -> CommittedTable:  # the data stage's contract, committed above
        return table

    assets = [curated_corpus, tokenizer, token_shards, model_catalog, base_model, trained_checkpoint, exported_model]
    result = dg.materialize(assets, resources=llmops_resources, run_config=RUN_CONFIG, raise_on_error=True)
    assert result.success
    return result, llmops_resources, assets


def test_training_graph_end_to_end(materialized, home):
    result, resources, assets = materialized
    tok = result.output_for_node("tokenizer")
    assert Path(tok.path) == home / "tokenizers" / tok.sha256
    shards = result.output_for_node("token_shards")
    assert Path(shards.path) == home / "shards" / f"testcommit-{tok.sha256[:8]}"
    manifest = json.loads((Path(shards.path) / "manifest.json").read_text())
    assert manifest["data_commit"] == "testcommit" and manifest["tokenizer_sha256"] == tok.sha256

    choice = result.output_for_node("base_model")
    assert choice.name == "tiny-gpt2" and choice.reasons[0].startswith("tiny-gpt2: chosen")

    ckpt = result.output_for_node("trained_checkpoint")
    assert ckpt.steps == 6 and ckpt.final_loss > 0 and ckpt.data_commit == "testcommit"
    assert (Path(ckpt.checkpoint_dir) / "latest").read_text() == "step00000006"
    assert (Path(ckpt.model_dir) / "model.safetensors").exists()
    meta = result.asset_materializations_for_node("trained_checkpoint")[0].metadata
    assert meta["steps"].value == 6 and meta["tokens_per_s"].value > 0
    assert Path(meta["loss_plot"].value).exists()

    # MLflow, read back through a fresh client on the sqlite store
    client = MlflowClient(resources["tracking"].tracking_uri)
    run = client.get_run(ckpt.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["zero_stage"] == "2" and run.data.params["max_steps"] == "6"
    assert run.data.params["model.config.n_layer"] == "2" and run.data.params["nproc"] == "2"
    tags = run.data.tags
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    assert tags["git_dirty"] in ("true", "false", "unknown")
    assert tags["data_commit"] == "testcommit" and tags["tokenizer_sha256"] == tok.sha256
    assert tags["shards_manifest_sha256"] == shards.manifest_sha256 and tags["dagster_run_id"] == result.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert len(client.get_metric_history(run.info.run_id, "tokens_per_s")) == 6
    assert all(m.value > 10 for m in client.get_metric_history(run.info.run_id, "memory_mb"))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [1, 2, 3, 4, 5, 6]

    # the exported model loads, generates, and is a registered version
    exported = result.output_for_node("exported_model")
    assert exported.registered_name == "llmops-demo" and exported.version == "1"
    assert Path(exported.path) == home / "models" / "llmops-demo" / "v1"
    model = AutoModelForCausalLM.from_pretrained(exported.path)
    hf_tok = AutoTokenizer.from_pretrained(exported.path)
    assert model.config.eos_token_id == hf_tok.eos_token_id and model.config.pad_token_id == hf_tok.pad_token_id
    out = model.generate(**hf_tok("The quick", return_tensors="pt"), max_new_tokens=4, min_new_tokens=4,
                         do_sample=False, pad_token_id=hf_tok.pad_token_id)
    assert out.shape[1] == len(hf_tok("The quick")["input_ids"]) + 4
    versions = client.search_model_versions("name='llmops-demo'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", ckpt.mlflow_run_id)]

    # materializing again with the same inputs and config reuses the finished run instead of training
    again = dg.materialize(assets, selection=["trained_checkpoint"], resources=resources,
                           run_config={"ops": {"trained_checkpoint": RUN_CONFIG["ops"]["trained_checkpoint"]}})
    assert again.output_for_node("trained_checkpoint") == ckpt
    runs = client.search_runs([resources["tracking"].experiment_id()])
    assert [r.info.run_id for r in runs] == [ckpt.mlflow_run_id]  # no second run was started


def test_lora_fine_tune_of_a_local_model_through_the_graph(llmops_resources, spark, tmp_path):
    from tests.tiny_model import build_tiny_model

    base_dir = build_tiny_model(tmp_path / "pretrained", train_steps=30)
    table = write_corpus(spark, llmops_resources["lakehouse"], n_docs=200)

    @dg.asset(name="curated_corpus", group_name="data")
    def curated_corpus() -> CommittedTable:
        return table

    run_config = {"ops": {
        "tokenizer": {"config": {"local_path": str(base_dir)}},
        "token_shards": RUN_CONFIG["ops"]["token_shards"],
        "base_model": {"config": {"local_path": str(base_dir)}},
        "trained_checkpoint": {"config": {"method": "lora", "lora_r": 4, "max_steps": 4, "save_every": 2,
                                          "micro_batch_size": 4, "log_every": 1, "zero_stage": 1}},
    }}
    result = dg.materialize([curated_corpus, tokenizer, token_shards, model_catalog, base_model, trained_checkpoint,
                             exported_model], resources=llmops_resources, run_config=run_config, raise_on_error=True)
    tok = result.output_for_node("tokenizer")
    assert (Path(tok.path) / "tokenizer.json").read_bytes() == (base_dir / "tokenizer.json").read_bytes()
    assert result.output_for_node("base_model").reasons[0].startswith("pretrained: local_path")
    meta = result.asset_materializations_for_node("trained_checkpoint")[0].metadata
    assert meta["method"].value == "lora" and 0 < meta["trainable_parameters"].value < meta["parameters"].value
    exported = Path(result.output_for_node("exported_model").path)
    assert (exported / "adapter" / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(exported)  # a plain model: the adapter is merged in
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(base_dir).config.vocab_size
    run = MlflowClient(llmops_resources["tracking"].tracking_uri).get_run(meta["mlflow_run_id"].value)
    assert run.data.params["method"] == "lora" and run.data.params["lora_r"] == "4"
