"""The blocking gate on the real graph: a model trained for 1 step, evaluated against a promoted model
trained for 60, fails eval_gate, and quantized_model (the way to deployment) does not run."""

import dagster as dg
import numpy as np

from llm_assets.artifacts import ExportedModel, ShardSet
from llm_assets.optimization.assets import quantized_model
from llm_assets.evaluation import review
from llm_assets.evaluation.assets import eval_gate, eval_report
from llm_assets.tokens import shards
from tests.tiny_model import TEXT, build_tiny_model, train_tokenizer

SUITE = {  # stand-ins for the other evaluation assets, which have tests of their own
    "task_scores": {"llmops_cloze": {"acc": 0.5, "n": 10}, "llmops_next_passage": {"acc": 0.3, "n": 10}},
    "rag_eval": {"metrics": {"recall_at_5": {"value": 0.9, "n": 10},
                             "faithfulness": {"missing": "judge http://127.0.0.1:9/v1 refused the connection"}}},
    "red_team_report": {"categories": {c: {"rate": 0.5, "n": 4} for c in
                                       ("prompt_injection", "system_prompt_leak", "pii_extraction")},
                        "report_path": "/nonexistent/redteam.json"},
    "bias_report": {"groups": {}, "gaps": {"toxicity_rate": {"gap": 0.0}}},
    "resource_benchmark": {"fp32_served_tokens_per_s_c1": 10.0},
}
EVAL = {"perplexity_sequences": 8, "rouge_samples": 2, "toxicity_samples": 2, "prompt_tokens": 8,
        "continuation_tokens": 8, "max_new_tokens": 8}


def pack_validation_shards(root, tokenizer) -> ShardSet:
    ids = tokenizer.backend_tokenizer.encode(TEXT * 8).ids
    docs = [(split, np.array(ids[i:i + 40])) for i, split in zip(range(0, len(ids) - 40, 40),
                                                                  ["train", "validation"] * 1000)]
    docs.sort(key=lambda d: d[0])
    result = shards.pack_shards(docs, root / "shards", seq_len=32, sequences_per_shard=64,
                                vocab_size=len(tokenizer), header={"tokenizer_sha256": "t", "data_commit": "c"})
    return ShardSet(path=str(result.path), manifest_sha256=result.manifest_sha256, data_commit="c", seq_len=32)


def evaluate(version_dir, version, run_id, shard_set, resources):
    @dg.asset(name="exported_model", group_name="training")
    def exported() -> ExportedModel:
        return ExportedModel(path=str(version_dir), registered_name="gated", version=version, mlflow_run_id=run_id,
                             data_commit="c")

    @dg.asset(name="token_shards", group_name="tokens")
    def token_shards() -> ShardSet:
        return shard_set

    def stand_in(name, value):
        @dg.asset(name=name, group_name="evaluation")
        def _stand_in() -> dict:
            return value
        return _stand_in

    suite = [stand_in(name, value) for name, value in SUITE.items()]
    return dg.materialize([exported, token_shards, *suite, eval_report, eval_gate, quantized_model], resources=resources,
                          run_config={"ops": {"eval_report": {"config": EVAL}}}, raise_on_error=False)


def test_gate_blocks_a_model_worse_than_the_promoted_one(llmops_resources, tmp_path):
    tracking = llmops_resources["tracking"]
    good = build_tiny_model(tmp_path / "good", train_steps=60)
    bad = build_tiny_model(tmp_path / "bad", train_steps=1)
    shard_set = pack_validation_shards(tmp_path, train_tokenizer())
    run_id = tracking.start_run("gate-test", {})
    assert tracking.register_model("gated", str(good), run_id) == "1"
    assert tracking.register_model("gated", str(bad), run_id) == "2"

    first = evaluate(good, "1", run_id, shard_set, llmops_resources)
    assert first.success and first.output_for_node("eval_report")["baseline"] is None
    assert first.asset_materializations_for_node("quantized_model")  # nothing promoted yet: the gate passes
    tracking.promote("gated", "1")  # what the endpoint asset does when it deploys v1

    second = evaluate(bad, "2", run_id, shard_set, llmops_resources)
    report = second.output_for_node("eval_report")
    assert report["baseline"]["version"] == "1"
    assert report["perplexity"] > report["baseline"]["metrics"]["perplexity"] * 1.25
    (check,) = second.get_asset_check_evaluations()
    assert not check.passed
    assert "perplexity: " in check.description and "of promoted v1" in check.description
    assert check.metadata["perplexity_vs_promoted_passed"].value is False
    assert report["task_llmops_cloze_acc"] == 0.5 and report["redteam_prompt_injection_rate"] == 0.5
    assert report["missing"] == {"rag_faithfulness": "judge http://127.0.0.1:9/v1 refused the connection"}
    assert not second.asset_materializations_for_node("quantized_model")  # blocked: never built, never deployed

    queued = review.items(llmops_resources["lakehouse"].root, "gated", "2")
    assert {i["kind"] for i in queued} == {"continuation", "sampled", "qa"} and report["qa_pairs"] > 0
    assert (tmp_path / "home" / "reports" / "eval" / "gated-v2.trend.png").exists()


def test_a_model_without_a_tokenizer_is_reported_missing_and_fails_the_gate(llmops_resources, tmp_path):
    from llm_assets.evaluation.assets import bias_report, red_team_report, resource_benchmark, task_scores

    model_dir = build_tiny_model(tmp_path / "no-tokenizer", train_steps=1)
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            f.unlink()
    shard_set = pack_validation_shards(tmp_path, train_tokenizer())
    run_id = llmops_resources["tracking"].start_run("no-tokenizer-test", {})

    @dg.asset(name="exported_model", group_name="training")
    def exported() -> ExportedModel:
        return ExportedModel(path=str(model_dir), registered_name="untokenized", version="1", mlflow_run_id=run_id,
                             data_commit="c")

    @dg.asset(name="token_shards", group_name="tokens")
    def token_shards() -> ShardSet:
        return shard_set

    @dg.asset(name="rag_eval", group_name="evaluation")
    def rag_stand_in() -> dict:
        return SUITE["rag_eval"]

    result = dg.materialize([exported, token_shards, task_scores, red_team_report, bias_report, resource_benchmark,
                             rag_stand_in, eval_report, eval_gate], resources=llmops_resources,
                            run_config={"ops": {"eval_report": {"config": EVAL}}}, raise_on_error=False)
    report = result.output_for_node("eval_report")
    assert report["perplexity"] > 1  # needs token ids only
    for metric in ("rouge_l", "exact_match", "toxicity_rate", "task_llmops_cloze", "redteam_prompt_injection",
                   "bias_*", "bench_*"):
        reasons = [why for name, why in report["missing"].items() if name.startswith(metric.rstrip("*"))]
        assert reasons and "tokenizer in" in reasons[0] and str(model_dir) in reasons[0], metric
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert "task_llmops_cloze_acc: missing: the tokenizer in" in check.description
    assert "bias_toxicity_rate_gap: missing: the tokenizer in" in check.description
