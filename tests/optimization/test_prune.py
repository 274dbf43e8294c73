"""Magnitude and structured pruning of a real tiny GPT-2, saved as model directories that load and generate."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_assets.evaluation.metrics import generate, perplexity
from llm_assets.optimization import compare
from llm_assets.optimization.prune import prune_model_dir, sparsity
from tests.tiny_model import build_tiny_model, token_windows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", train_steps=60)


def test_magnitude_pruning_zeroes_the_requested_share_and_keeps_embeddings(model_dir, tmp_path):
    info = prune_model_dir(model_dir, tmp_path / "pruned", "magnitude", 0.4)
    assert abs(info["weight_sparsity"] - 0.4) < 0.01
    assert info["parameters"] == info["parameters_before"] > info["nonzero_parameters"]

    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")  # a plain HF directory
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    assert abs(sparsity(pruned) - 0.4) < 0.01
    assert torch.equal(pruned.transformer.wte.weight, original.transformer.wte.weight)
    assert json.loads((tmp_path / "pruned" / "pruning.json").read_text())["method"] == "magnitude"
    assert (tmp_path / "pruned" / "tokenizer.json").exists()


def test_structured_pruning_shrinks_the_mlp_and_the_files(model_dir, tmp_path):
    info = prune_model_dir(model_dir, tmp_path / "pruned", "structured", 0.5)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert pruned.config.n_inner == 64  # 4 * 32 wide, half removed
    assert pruned.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)
    assert info["parameters"] < info["parameters_before"]
    assert compare.weight_bytes(tmp_path / "pruned") < compare.weight_bytes(model_dir)

    seqs = token_windows(model_dir, n=4, seq_len=32)
    assert [len(o) for o in generate(pruned, seqs[:2, :8], 4)] == [4, 4]
    before = perplexity(AutoModelForCausalLM.from_pretrained(model_dir), seqs)
    assert perplexity(pruned, seqs) < 3 * before  # damaged, not destroyed: the weakest neurons went


@pytest.mark.parametrize("method, amount, message", [
    ("random", 0.3, "'random' is not one of"),
    ("magnitude", 1.0, r"sparsity must be in \(0, 1\), got 1.0"),
])
def test_bad_pruning_settings_are_named(model_dir, tmp_path, method, amount, message):
    with pytest.raises(ValueError, match=message):
        prune_model_dir(model_dir, tmp_path / "p", method, amount)
    assert not (tmp_path / "p").exists()


def test_comparison_reports_quality_size_and_speed_against_the_original(model_dir, tmp_path):
    from transformers import AutoTokenizer

    prune_model_dir(model_dir, tmp_path / "pruned", "structured", 0.5)
    tok = AutoTokenizer.from_pretrained(model_dir)
    seqs = token_windows(model_dir, n=4, seq_len=32).numpy()
    qa = [{"context": "The dog sleeps in the sun.", "question": "Where does the dog sleep?", "answer": "in the sun"}]
    scores = [compare.score_model(AutoModelForCausalLM.from_pretrained(d), tok, seqs, d, qa_items=qa, new_tokens=4)
              for d in (model_dir, tmp_path / "pruned")]
    result = compare.comparison(*scores)
    assert result["size_ratio"] < 1 and result["parameters"] < result["original_parameters"]
    assert result["perplexity_delta"] == pytest.approx(result["perplexity"] - result["original_perplexity"])
    assert result["tokens_per_s"] > 0 and 0 <= result["token_f1"] <= 1
    table = compare.comparison_table(*scores, "pruned")
    assert table.count("\n") == 7 and "| perplexity (validation) |" in table
