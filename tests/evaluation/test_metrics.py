"""Perplexity, ROUGE-L and toxicity on a real tiny GPT-2 (tests/tiny_model.py) and the real classifiers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_assets.evaluation.metrics import (bits_per_byte, bleu, evaluate_model, exact_match, fixed_heldout_scores,
                                           generate, load_qa, mean_cross_entropy, perplexity, rouge, rouge_l,
                                           sample_rows, split_lengths, token_f1, toxicity_rate, wilson_interval)
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
    assert set(m) >= {"perplexity", "rouge_l", "rouge_1", "rouge_2", "bleu", "bits_per_byte", "fixed_perplexity",
                      "fixed_bits_per_byte", "exact_match", "token_f1", "toxicity_rate"}
    assert report["samples"]["qa_pairs"] == len(load_qa()) and report["samples"]["fixed_heldout_tokens"] > 0
    lo, hi = report["intervals"]["toxicity_rate"]
    assert lo <= m["toxicity_rate"] <= hi
    assert 1 < m["perplexity"] < 100 and 0 <= m["rouge_l"] <= 1 and 0 <= m["toxicity_rate"] <= 1
    assert report["samples"]["perplexity_sequences"] == 4 and report["samples"]["rouge_samples"] == 3
    assert report["lengths"] == {"seq_len": 32, "prompt_tokens": 16, "continuation_tokens": 16, "max_new_tokens": 8}
    assert report["examples"][0]["reference"]


def test_bits_per_byte_is_cross_entropy_in_bits_over_text_bytes(model_dirs, sequences):
    model, tokenizer = load(model_dirs[0]), AutoTokenizer.from_pretrained(model_dirs[0])
    ids = sequences.astype(np.int64)
    nats = mean_cross_entropy(model, ids) * ids.shape[0] * (ids.shape[1] - 1)
    n_bytes = sum(len(tokenizer.decode(row[1:]).encode()) for row in ids.tolist())
    assert bits_per_byte(model, tokenizer, ids) == pytest.approx(nats / math.log(2) / n_bytes)
    assert bits_per_byte(model, tokenizer, ids) < bits_per_byte(load(model_dirs[1]), tokenizer, ids)


def test_fixed_heldout_set_is_the_same_text_for_every_model(model_dirs):
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[0])
    trained = fixed_heldout_scores(load(model_dirs[0]), tokenizer, window=32)
    untrained = fixed_heldout_scores(load(model_dirs[1]), tokenizer, window=32)
    assert trained["tokens"] == untrained["tokens"] > 1000
    assert 0 < trained["bits_per_byte"] < untrained["bits_per_byte"]


def test_generation_metrics():
    assert rouge(["the cat sat"], ["the cat sat"]) == {"rouge_1": 1.0, "rouge_2": 1.0, "rouge_l": 1.0}
    assert rouge(["the cat sat"], ["a dog ran"])["rouge_1"] == 0.0
    assert bleu(["def f ( x ) : return x * 2"], ["def f ( x ) : return x * 2"]) == pytest.approx(1.0)
    assert bleu(["alpha beta gamma delta"], ["one two three four"]) < 0.1
    assert exact_match("The Six in the evening!", "six in the evening")
    assert not exact_match("six", "six in the evening")
    assert token_f1("six in the evening", "six in the evening") == 1.0
    assert token_f1("at six", "six in the evening") == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert token_f1("", "six") == 0.0


def test_wilson_interval():
    lo, hi = wilson_interval(0, 16)
    assert lo == 0.0 and 0.15 < hi < 0.25  # zero of 16 still leaves up to ~19% plausible
    lo, hi = wilson_interval(8, 16)
    assert lo < 0.5 < hi and hi - lo < 0.5
    assert wilson_interval(0, 0) == [0.0, 1.0]
