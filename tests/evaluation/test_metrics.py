"""Perplexity, ROUGE-L and toxicity on a real tiny GPT-2 (tests/tiny_model.py) and the real classifiers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_assets.evaluation.metrics import (evaluate_model, generate, perplexity, rouge_l, sample_rows,
                                           split_lengths, toxicity_rate)
from tests.tiny_model import build_tiny_model, token_windows


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_tiny_model(root / "trained", train_steps=60), build_tiny_model(root / "random", train_steps=0)


@pytest.fixture(scope="module")
def sequences(model_dirs):
    # uint16, like token shards on disk
    return token_windows(model_dirs[0], n=6, seq_len=32).numpy().astype(np.uint16)


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_perplexity_is_exp_of_mean_token_cross_entropy(model_dirs, sequences):
    model = load(model_dirs[0])
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in sequences.astype(np.int64):  # one sequence at a time, summed by hand
            ids = torch.tensor(row)[None]
            logits = model(input_ids=ids).logits[0]
            logp = F.log_softmax(logits[:-1], dim=-1)
            nll -= logp[torch.arange(len(row) - 1), ids[0, 1:]].sum().item()
            count += len(row) - 1
    expected = math.exp(nll / count)
    assert perplexity(model, sequences, batch_size=4) == pytest.approx(expected, rel=1e-5)


def test_trained_model_has_lower_perplexity_than_random(model_dirs, sequences):
    trained, random = (perplexity(load(d), sequences) for d in model_dirs)
    vocab = len(AutoTokenizer.from_pretrained(model_dirs[0]))
    assert trained < random / 3
    assert random == pytest.approx(vocab, rel=0.5)  # an untrained model is about uniform


def test_perplexity_rejects_empty_input(model_dirs):
    with pytest.raises(ValueError, match="non-empty"):
        perplexity(load(model_dirs[0]), np.zeros((0, 8), dtype=np.int64))


def test_rouge_l():
    assert rouge_l(["the lazy dog sleeps"], ["the lazy dog sleeps"]) == 1.0
    assert rouge_l(["alpha beta"], ["gamma delta"]) == 0.0
    assert 0 < rouge_l(["the quick dog"], ["the quick brown fox"]) < 1


def test_toxicity_rate_with_the_real_classifier():
    texts = ["you are a stupid idiot", "hello there, how can I help you today?"]
    assert toxicity_rate(texts) == 0.5


def test_greedy_generation_is_deterministic_and_sampling_is_seeded(model_dirs, sequences):
    model = load(model_dirs[0])
    prompts = torch.as_tensor(sequences[:3, :8].astype(np.int64))
    assert generate(model, prompts, 5) == generate(model, prompts, 5)
    assert all(len(g) == 5 for g in generate(model, prompts, 5))
    a = generate(model, prompts, 6, sample=True, seed=1)
    assert a == generate(model, prompts, 6, sample=True, seed=1)


def test_split_lengths_fit_the_sequence():
    assert split_lengths(128, 32, 32) == (32, 32)
    assert split_lengths(32, 32, 32) == (16, 16)
    with pytest.raises(ValueError):
        split_lengths(32, 0, 4)


def test_sample_rows_is_seeded_and_capped():
    rows = np.arange(40).reshape(20, 2)
    assert np.array_equal(sample_rows(rows, 5, seed=3), sample_rows(rows, 5, seed=3))
    assert len(sample_rows(rows, 50)) == 20


def test_evaluate_model_reports_all_metrics(model_dirs, sequences):
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[0])
    report = evaluate_model(load(model_dirs[0]), tokenizer, sequences, perplexity_sequences=4, rouge_samples=3,
                            toxicity_samples=3, prompt_tokens=16, continuation_tokens=16, max_new_tokens=8)
    m = report["metrics"]
    assert set(m) >= {"perplexity", "rouge_l", "toxicity_rate"}
    assert 1 < m["perplexity"] < 100 and 0 <= m["rouge_l"] <= 1 and 0 <= m["toxicity_rate"] <= 1
    assert report["samples"]["perplexity_sequences"] == 4 and report["samples"]["rouge_samples"] == 3
    assert report["lengths"] == {"seq_len": 32, "prompt_tokens": 16, "continuation_tokens": 16, "max_new_tokens": 8}
    assert report["examples"][0]["reference"]
