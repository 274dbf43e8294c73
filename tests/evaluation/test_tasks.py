"""Task benchmarks through lm-evaluation-harness on a real tiny GPT-2 (tests/tiny_model.py), offline.

One lm-eval run scores the trained model on the project tasks, four broken task YAMLs and an lm-eval
task whose data is on the hub; the task_scores asset scores the untrained model, so the two compare.
"""

import json
import math
import re

import dagster as dg
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from llm_assets.artifacts import ExportedModel, ShardSet
from llm_assets.evaluation import tasks
from llm_assets.evaluation.assets import task_scores
from llm_assets.tokens import shards
from resources import build_resources
from tests.tiny_model import TEXT, build_tiny_model

SAMPLES = 24
CONFIG = {"samples": SAMPLES, "context_words": 8, "choice_words": 4, "seed": 0}
LINES = [line for line in TEXT.splitlines() if line]
# 30 validation documents: the tiny model's text, each starting at another line.
DOCS = ["\n".join(LINES[i % len(LINES):] + LINES[:i % len(LINES)]) for i in range(30)]


def pack_validation(root, model_dir, docs=DOCS) -> ShardSet:
    tok = AutoTokenizer.from_pretrained(model_dir)
    stream = [("validation", np.array(tok(d)["input_ids"] + [tok.eos_token_id])) for d in docs]
    result = shards.pack_shards(stream, root / "shards", seq_len=32, sequences_per_shard=16, vocab_size=len(tok),
                                header={"tokenizer_sha256": "t", "data_commit": "c"})
    return ShardSet(path=str(result.path), manifest_sha256=result.manifest_sha256, data_commit="c", seq_len=32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model trains faster on one thread than on two contended ones
    try:
        trained = build_tiny_model(root / "trained", train_steps=300)
        untrained = build_tiny_model(root / "untrained", train_steps=0)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "trained": trained, "untrained": untrained,
            "shards": pack_validation(root, trained)}


BROKEN = {
    "bad_syntax": lambda y: "task: bad_syntax\ndataset_path: json\n  oops: [\n",
    "bad_file": lambda y: y.replace("llmops_cloze.jsonl", "missing.jsonl"),
    "bad_field": lambda y: y.replace("doc_to_text: context", 'doc_to_text: "{{passage}}"'),
    "bad_metric": lambda y: y.replace("metric: perplexity", "metric: perplexityy"),
}


@pytest.fixture(scope="module")
def trained_scores(models):
    """The trained model on the project tasks, the broken YAMLs and boolq (data on the hub), offline."""
    run_dir = models["root"] / "run"
    rows = tasks.build_task_data(models["shards"].path, str(models["trained"]), run_dir / "data", **CONFIG)
    assert rows == {"llmops_next_passage.jsonl": SAMPLES, "llmops_cloze.jsonl": SAMPLES}
    cloze = (tasks.TASKS_DIR / "llmops_cloze.yaml").read_text()
    broken = []
    for name, edit in BROKEN.items():
        path = models["root"] / "yamls" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(edit(cloze).replace("task: llmops_cloze", f"task: {name}"))
        broken.append(str(path))
    return tasks.run_tasks(str(models["trained"]), [*tasks.PROJECT_TASKS, *broken], run_dir,
                           standard_tasks=["boolq"], samples=SAMPLES, cache_dir=models["root"] / "hf", timeout_s=900)


@pytest.fixture(scope="module")
def untrained_materialized(models, tmp_path_factory):
    """task_scores materialized for the untrained model, with the real settings and MLflow resources."""
    home = tmp_path_factory.mktemp("task_home")
    resources = build_resources({"LLMOPS_HOME": str(home)})
    run_id = resources["tracking"].start_run("task-scores-test", {})

    @dg.asset(name="exported_model", group_name="training")
    def exported() -> ExportedModel:
        return ExportedModel(path=str(models["untrained"]), registered_name="tiny", version="1", mlflow_run_id=run_id,
                             data_commit="c")

    @dg.asset(name="token_shards", group_name="tokens")
    def token_shards() -> ShardSet:
        return models["shards"]

    result = dg.materialize([exported, token_shards, task_scores], resources=resources,
                            run_config={"ops": {"task_scores": {"config": CONFIG}}})
    return {"result": result, "home": home, "run_id": run_id, "tracking": resources["tracking"]}


def test_validation_documents_are_the_packed_documents(models):
    tok = AutoTokenizer.from_pretrained(models["trained"])
    docs = tasks.validation_documents(shards.read_split(models["shards"].path, "validation"), tok, tok.eos_token_id)
    assert docs[:-1] == DOCS[:len(docs) - 1]  # only the last one may be cut where the stream's tail was dropped
    assert DOCS[len(docs) - 1].startswith(docs[-1])


def test_task_rows_are_seeded_and_come_from_the_documents():
    flat = [" ".join(d.split()) for d in DOCS]
    rows = tasks.next_passage_rows(DOCS, 10, context_words=8, choice_words=4, seed=3)
    assert len(rows) == 10 and rows == tasks.next_passage_rows(DOCS, 10, context_words=8, choice_words=4, seed=3)
    assert rows != tasks.next_passage_rows(DOCS, 10, context_words=8, choice_words=4, seed=4)
    for r in rows:
        assert len(r["context"].split()) == 8 and len(set(r["choices"])) == 4
        assert all(len(c.split()) == 4 for c in r["choices"])
        assert any(f"{r['context']} {r['choices'][r['label']]}" in d for d in flat)  # the true continuation
    assert {r["label"] for r in rows} != {rows[0]["label"]}  # the answer's position varies

    cloze = tasks.cloze_rows(DOCS, 10, context_words=8)
    assert len(cloze) == 10
    for r in cloze:
        assert re.fullmatch(r"\w+(?:['-]\w+)*", r["target"])
        assert any(f"{r['context']} {r['target']}" in d for d in flat)


def test_too_few_passages_give_fewer_rows_not_made_up_ones():
    assert len(tasks.cloze_rows(["one two three four five"], 10, context_words=2)) == 1
    assert tasks.next_passage_rows(["a b c d e f"], 10, context_words=2, choice_words=1) == []


def test_rates_get_a_wilson_interval_and_perplexity_a_log_scale_one():
    s = tasks.summarize({"acc,none": 0.25, "acc_stderr,none": 0.1, "perplexity,none": 40.0,
                         "perplexity_stderr,none": 20.0, "alias": "x"}, n=20)
    assert s["n"] == 20 and s["acc"] == 0.25
    assert s["ci95"]["acc"] == pytest.approx(tasks.wilson_interval(5, 20))
    lo, hi = s["ci95"]["acc"]
    assert 0 < lo < 0.25 < hi < 1
    assert tasks.wilson_interval(0, 20)[0] == 0 and tasks.wilson_interval(0, 20)[1] > 0  # not [0, 0] at a rate of 0
    lo, hi = s["ci95"]["perplexity"]
    assert 0 < lo < 40 < hi and lo * hi == pytest.approx(40 ** 2)


def test_a_metric_lm_eval_drops_is_missing_with_its_warning():
    s = tasks.summarize({"acc,none": 0.5}, 10, expected=["acc", "bleu"],
                        warnings=["metric bleu is defined, but output_type is loglikelihood", "unrelated"])
    assert s["missing_metrics"] == {"bleu": "metric bleu is defined, but output_type is loglikelihood"}
    assert tasks.summarize({"alias": "x"}, 10, expected=["acc"])["missing"].startswith("acc: lm-eval computed no value")


def test_project_tasks_score_with_their_sample_size_and_interval(trained_scores):
    for task in tasks.PROJECT_TASKS:
        s = trained_scores[task]
        assert "missing" not in s and "missing_metrics" not in s, s
        assert s["n"] == SAMPLES
        for metric, value in s.items():
            if metric in tasks.NOT_METRICS:
                continue
            lo, hi = s["ci95"][metric]
            assert lo <= value <= hi
            if metric in tasks.RATE_METRICS:
                assert 0 <= lo <= value <= hi <= 1
    assert set(trained_scores["llmops_next_passage"]) >= {"acc", "acc_norm"}
    assert trained_scores["llmops_cloze"]["perplexity"] > 1
    # the same rows scored by likelihood (the word is the greedy continuation) and by generation
    assert trained_scores["llmops_cloze"]["acc"] == pytest.approx(trained_scores["llmops_cloze_gen"]["exact_match"],
                                                                  abs=0.15)


def test_broken_task_yamls_are_missing_with_the_reason_and_the_others_score(trained_scores):
    syntax = trained_scores["bad_syntax"]["missing"]
    assert "ScannerError" in syntax and "bad_syntax.yaml" in syntax and "line 3" in syntax
    assert "missing.jsonl" in trained_scores["bad_file"]["missing"]
    assert "'passage' is undefined" in trained_scores["bad_field"]["missing"]
    bad_metric = trained_scores["bad_metric"]
    assert bad_metric["acc"] == trained_scores["llmops_cloze"]["acc"]  # its other metric still scores
    assert "perplexityy" in bad_metric["missing_metrics"]["perplexityy"]  # lm-eval's own words


def test_a_standard_task_offline_is_missing_with_the_reason(trained_scores):
    reason = trained_scores["boolq"]["missing"]
    assert reason.startswith("offline") and "super_glue" in reason


def test_the_trained_model_scores_better_than_the_untrained_one(trained_scores, untrained_materialized):
    untrained = untrained_materialized["result"].output_for_node("task_scores")
    assert all(untrained[t]["n"] == SAMPLES for t in tasks.PROJECT_TASKS)
    assert trained_scores["llmops_cloze"]["perplexity"] < untrained["llmops_cloze"]["perplexity"] / 10
    assert trained_scores["llmops_cloze"]["acc"] > untrained["llmops_cloze"]["acc"] + 0.2
    assert trained_scores["llmops_next_passage"]["acc"] > untrained["llmops_next_passage"]["acc"]


def test_task_scores_asset_logs_each_metric_to_the_models_mlflow_run(untrained_materialized):
    result, run_id = untrained_materialized["result"], untrained_materialized["run_id"]
    assert result.success
    scores = result.output_for_node("task_scores")
    (mat,) = result.asset_materializations_for_node("task_scores")
    metrics = untrained_materialized["tracking"].client().get_run(run_id).data.metrics
    for task in tasks.PROJECT_TASKS:
        for metric, value in scores[task].items():
            if metric not in tasks.NOT_METRICS:
                assert metrics[f"task_{task}_{metric}"] == pytest.approx(value)
                assert mat.metadata[f"task_{task}_{metric}"].value == pytest.approx(value)
        assert mat.metadata[f"task_{task}_n"].value == SAMPLES
    assert "| llmops_cloze | perplexity |" in mat.metadata["tasks"].value
    assert mat.metadata["missing"].value == 0
    report = untrained_materialized["home"] / "reports" / "eval" / "tiny-v1-tasks" / "scores.json"
    assert json.loads(report.read_text()) == scores
    assert not math.isnan(scores["llmops_cloze"]["perplexity"])
