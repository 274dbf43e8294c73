"""Good-feedback examples in training: a real feedback_dataset Delta table (written as the monitoring asset
writes it), its chat transcripts packed into token shards, and a real 2-process DeepSpeed run that fine-tunes
a model directory (init_from, as the feedback sensor asks) on the token shards plus those examples."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from llm_assets.artifacts import ShardSet, TokenizerArtifact
from llm_assets.deployment import prompts
from llm_assets.monitoring import feedback_data
from llm_assets.tokens import shards
from llm_assets.tokens.tokenizer import EOS_TOKEN, load_tokenizer
from llm_assets.training import feedback
from llm_assets.training.assets import base_model, model_catalog, trained_checkpoint

SYSTEM = prompts.PromptVersion("assistant", prompts.version_of("You answer briefly."), "You answer briefly.")
EXAMPLES = [
    {"request_id": "r2", "prompt": "What is a token shard?", "response": "A file of packed token ids.",
     "prompt_version": SYSTEM.version},
    {"request_id": "r1", "prompt": "hello there", "response": "hello, how can I help you today?",
     "prompt_version": None},
    {"request_id": "r3", "prompt": "Name a lazy animal.", "response": "The lazy dog sleeps in the sun.",
     "prompt_version": "unregistered0"},
]


def write_feedback(spark, lakehouse, rows):
    """Commit `rows` as a new version of the feedback_dataset table, the way monitoring's asset does."""
    df = pd.DataFrame([{"model": "llmops-demo", "model_version": "1", "rating": 5, "thumbs": "up", "comment": None,
                        **r} for r in rows], columns=feedback_data.COLUMNS)
    return lakehouse.write(feedback_data.to_spark(spark, df), feedback.TABLE, f"{len(rows)} examples")


def test_feedback_shards_are_deterministic_and_decode_to_the_chat_transcripts(llmops_resources, spark, tiny_inputs,
                                                                              tmp_path):
    lakehouse = llmops_resources["lakehouse"]
    version, rows = feedback.read_examples(lakehouse)
    assert version is None and rows.empty  # no table yet: nothing to mix in
    first = write_feedback(spark, lakehouse, EXAMPLES)
    write_feedback(spark, lakehouse, EXAMPLES[:1])
    prompts.register(lakehouse.root, [SYSTEM])

    version, rows = feedback.read_examples(lakehouse)
    assert version == first.version + 1 and list(rows["request_id"]) == ["r2"]
    version, rows = feedback.read_examples(lakehouse, first.version)  # a pinned, older version
    assert version == first.version and list(rows["request_id"]) == ["r1", "r2", "r3"]
    with pytest.raises(ValueError, match="version 7 does not exist"):
        feedback.read_examples(lakehouse, 7)

    texts = feedback.format_examples(rows, tiny_inputs["tokenizer_dir"], feedback.system_messages(lakehouse.root))
    assert texts == [  # ChatML, as the llmops tokenizer's chat template renders what the gateway served
        "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\nhello, how can I help you today?<|im_end|>\n",
        "<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\nWhat is a token shard?<|im_end|>\n"
        "<|im_start|>assistant\nA file of packed token ids.<|im_end|>\n",
        "<|im_start|>user\nName a lazy animal.<|im_end|>\n<|im_start|>assistant\nThe lazy dog sleeps in the sun."
        "<|im_end|>\n",
    ]

    def pack(out):
        return feedback.pack_examples(texts, tiny_inputs["tokenizer_dir"], out, eos_token=EOS_TOKEN, seq_len=32,
                                      sequences_per_shard=4, repeat=3, seed=0, header={"data_commit": "fb@0"})

    a, b = pack(tmp_path / "a"), pack(tmp_path / "b")
    files = sorted(p.name for p in a.path.iterdir())
    assert files == sorted(p.name for p in b.path.iterdir()) and len(files) > 2  # several shards + manifest
    assert all((a.path / f).read_bytes() == (b.path / f).read_bytes() for f in files)
    assert a.manifest_sha256 == b.manifest_sha256
    assert a.manifest["tokenizer_sha256"] == tiny_inputs["sha"] and a.manifest["examples"] == 3
    assert a.manifest["splits"]["validation"] == []

    tok = load_tokenizer(tiny_inputs["tokenizer_dir"])
    eos = tok.token_to_id(EOS_TOKEN)
    stream = shards.read_split(str(a.path), "train").reshape(-1)
    ends = np.flatnonzero(stream == eos)
    pieces = [tok.decode(seg.tolist(), skip_special_tokens=False) for seg in np.split(stream, ends + 1)[:len(ends)]]
    pieces = [p.removesuffix(EOS_TOKEN) for p in pieces]
    assert sorted(pieces[:3]) == sorted(texts)  # each pass holds every example once
    assert sorted(pieces[3:6]) == sorted(texts) and set(pieces) == set(texts)
    assert len(stream) == 32 * sum(e["sequences"] for e in a.manifest["splits"]["train"])


@pytest.fixture
def fine_tuned(llmops_resources, spark, tiny_base):
    """trained_checkpoint fine-tuning tiny_base's model (init_from) on its shards plus feedback_dataset@0,
    pinned by the run tag while a newer version exists."""
    lakehouse = llmops_resources["lakehouse"]
    pinned = write_feedback(spark, lakehouse, EXAMPLES)
    write_feedback(spark, lakehouse, EXAMPLES[:1])
    tok_dir = tiny_base["tokenizer_dir"]

    @dg.asset(name="tokenizer", group_name="tokens")
    def tokenizer() -> TokenizerArtifact:  # the tokens stage's contracts, built by the tiny_base fixture
        return TokenizerArtifact(path=tok_dir, sha256=shards.file_sha256(Path(tok_dir) / "tokenizer.json"),
                                 vocab_size=load_tokenizer(tok_dir).get_vocab_size(), eos_token=EOS_TOKEN)

    @dg.asset(name="token_shards", group_name="tokens")
    def token_shards() -> ShardSet:
        path = tiny_base["shard_dir"]
        return ShardSet(path=path, manifest_sha256=shards.file_sha256(Path(path) / shards.MANIFEST),
                        data_commit="testcommit", seq_len=32)

    config = {"init_from": tiny_base["model_dir"], "feedback_repeat": 8, "max_steps": 4, "save_every": 2,
              "micro_batch_size": 4, "log_every": 1, "warmup_steps": 1}
    with dg.instance_for_test() as instance:
        result = dg.materialize([tokenizer, token_shards, model_catalog, base_model, trained_checkpoint],
                                resources=llmops_resources, instance=instance,
                                tags={feedback.VERSION_TAG: str(pinned.version)},
                                run_config={"ops": {"trained_checkpoint": {"config": config}}}, raise_on_error=True)
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, pinned, logs


def test_training_fine_tunes_on_feedback_examples_and_records_their_version(fine_tuned, llmops_resources):
    result, pinned, logs = fine_tuned
    meta = {k: v.value for k, v in result.asset_materializations_for_node("trained_checkpoint")[0].metadata.items()}
    assert meta["feedback_dataset_version"] == pinned.version and meta["feedback_examples"] == 3
    assert meta["feedback_sequences"] > 0 and meta["steps"] == 4
    assert 0 < meta["feedback_sequences_trained"] <= 4 * 4 * 2  # of the 32 sequences the 4 steps drew
    assert meta["feedback"] == f"3 feedback examples from feedback_dataset@{pinned.version} " \
                               f"(llmops/feedback_dataset_version={pinned.version})"

    ckpt = result.output_for_node("trained_checkpoint")
    run_cfg = json.loads((Path(ckpt.checkpoint_dir) / "run.json").read_text())
    feedback_dir = Path(ckpt.checkpoint_dir) / "feedback_shards"
    assert run_cfg["extra_shard_dirs"] == [str(feedback_dir)] and (feedback_dir / shards.MANIFEST).exists()
    assert run_cfg["model"] == {"name": "tiny-gpt2", "local_path": meta["init_from"]}
    manifest = json.loads((feedback_dir / shards.MANIFEST).read_text())
    assert manifest["examples"] == 3 and manifest["repeat"] == 8
    tok = load_tokenizer(run_cfg["tokenizer_dir"])
    stream = shards.read_split(str(feedback_dir), "train").reshape(-1).tolist()
    assert "user: hello there\nassistant: hello, how can I help you today?\n" + EOS_TOKEN in \
        tok.decode(stream, skip_special_tokens=False)  # the tiny model's own chat template

    # the worker drew that many feedback sequences, and said so in its log and to MLflow
    assert any(f"trained on {meta['feedback_sequences_trained']} sequences from {feedback_dir}" in m for m in logs)
    assert any(f"({meta['feedback_sequences']} from {feedback_dir})" in m for m in logs)
    client = MlflowClient(llmops_resources["tracking"].tracking_uri)
    run = client.get_run(ckpt.mlflow_run_id)
    assert run.data.params["feedback_dataset_version"] == str(pinned.version)
    assert run.data.params["feedback_examples"] == "3"
    assert run.data.tags["feedback_dataset_version"] == str(pinned.version)
    assert run.data.tags["init_from"] == meta["init_from"]
    (seen,) = client.get_metric_history(ckpt.mlflow_run_id, "extra_sequences_seen")
    assert seen.value == meta["feedback_sequences_trained"] and seen.step == 4


def test_an_extra_shard_set_from_another_tokenizer_is_refused(tiny_inputs, tiny_base, tmp_path):
    from llm_assets.training import launcher
    from tests.training.test_launcher import TINY

    cfg = launcher.RunConfig(run_name="mixed", checkpoint_dir=str(tmp_path), shard_dir=tiny_inputs["shard_dir"],
                             extra_shard_dirs=[tiny_base["shard_dir"]], tokenizer_dir=tiny_inputs["tokenizer_dir"],
                             model=TINY, nproc=1)
    with pytest.raises(ValueError, match=f"extra shard directory {tiny_base['shard_dir']} .* does not match"):
        launcher.validate(cfg)
    launcher.validate(launcher.RunConfig(**{**cfg.__dict__, "extra_shard_dirs": [tiny_inputs["shard_dir"]]}))


def test_the_count_of_feedback_rows_drawn_matches_the_batches():
    from llm_assets.training.worker import Batches

    main, extra = np.zeros((5, 4), dtype=np.uint16), np.ones((3, 4), dtype=np.uint16)
    batches = Batches([main, extra], seed=1)
    for rows in (0, 1, 7, 8, 19, 40):  # within, at and across epochs
        drawn = int(batches.get(0, rows)[:, 0].sum()) if rows else 0
        assert batches.drawn_from(rows, first=5) == drawn
    assert batches.drawn_from(16, first=5) == 6  # two whole epochs: each holds every feedback row once
