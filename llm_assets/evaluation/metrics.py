"""Evaluation metrics for a causal language model on held-out token sequences.

- perplexity: exp of the mean next-token cross-entropy over every predicted position.
- ROUGE-L: the first `prompt_len` tokens of a validation sequence are the prompt, the next
  `continuation_len` tokens the reference; the model continues greedily and both are decoded.
- toxicity rate: the share of sampled generations that `profanity_check` (alt-profanity-check, a
  linear SVM on offensive-language data) scores above `threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_token_tensor(sequences: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[n, seq_len] token ids (any integer dtype, e.g. uint16 shards) as int64."""
    t = torch.as_tensor(np.asarray(sequences).astype(np.int64) if not torch.is_tensor(sequences) else sequences)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] < 2:
        raise ValueError(f"sequences must be a non-empty [n, seq_len >= 2] array, got shape {tuple(t.shape)}")
    return t.long()


def sample_rows(sequences: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` rows drawn without replacement (all of them when there are fewer), in a seeded order."""
    if len(sequences) <= n:
        return sequences
    idx = np.sort(np.random.default_rng(seed).choice(len(sequences), size=n, replace=False))
    return sequences[idx]


@torch.no_grad()
def mean_cross_entropy(model: torch.nn.Module, sequences: np.ndarray | torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over all predicted positions of all sequences."""
    ids = as_token_tensor(sequences)
    model.eval()
    total, count = 0.0, 0
    for batch in ids.split(batch_size):
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 reduction="sum").item()
        count += targets.numel()
    return total / count


def perplexity(model: torch.nn.Module, sequences: np.ndarray | torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token cross-entropy) of `model` on `sequences` [n, seq_len]."""
    return math.exp(mean_cross_entropy(model, sequences, batch_size))


def split_lengths(seq_len: int, prompt_len: int, continuation_len: int) -> tuple[int, int]:
    """Prompt and continuation lengths that fit in `seq_len` (shrunk proportionally when they do not)."""
    if prompt_len < 1 or continuation_len < 1:
        raise ValueError(f"prompt and continuation lengths must be >= 1, got {prompt_len}, {continuation_len}")
    if prompt_len + continuation_len <= seq_len:
        return prompt_len, continuation_len
    prompt = max(1, seq_len * prompt_len // (prompt_len + continuation_len))
    return prompt, seq_len - prompt


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: torch.Tensor, max_new_tokens: int, *, sample: bool = False,
             temperature: float = 1.0, top_k: int = 50, seed: int = 0, eos_token_id: int | None = None,
             batch_size: int = 8) -> list[list[int]]:
    """Continue equal-length prompts [n, p]; returns the new token ids per prompt (cut at EOS).

    A plain decoding loop (no KV cache: these are short), so it works the same on the float and the
    dynamically quantized model.
    """
    gen = torch.Generator().manual_seed(seed)
    window = getattr(getattr(model, "config", None), "n_positions", None) or 1 << 30
    model.eval()
    out: list[list[int]] = []
    for batch in prompts.long().split(batch_size):
        ids = batch
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids[:, -window:].contiguous()).logits[:, -1].float()
            if sample:
                logits = logits / max(temperature, 1e-5)
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        for row in ids[:, batch.shape[1]:].tolist():
            if eos_token_id is not None and eos_token_id in row:
                row = row[:row.index(eos_token_id)]
            out.append(row)
    return out


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 of predictions against references (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)}, {len(references)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(ref, pred)["rougeL"].fmeasure
                          for pred, ref in zip(predictions, references)]))


def toxicity_probabilities(texts: Sequence[str]) -> list[float]:
    """profanity_check's probability that each text is offensive."""
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(list(texts))] if texts else []


def toxicity_rate(texts: Sequence[str], threshold: float = 0.5) -> float:
    """Share of `texts` that profanity_check scores above `threshold`."""
    if not texts:
        raise ValueError("toxicity_rate needs at least one text")
    probs = toxicity_probabilities(texts)
    return sum(p > threshold for p in probs) / len(probs)


def evaluate_model(model: torch.nn.Module, tokenizer, sequences: np.ndarray, *, perplexity_sequences: int = 64,
                   rouge_samples: int = 16, toxicity_samples: int = 16, prompt_tokens: int = 32,
                   continuation_tokens: int = 32, max_new_tokens: int = 32, temperature: float = 1.0,
                   top_k: int = 50, toxicity_threshold: float = 0.5, batch_size: int = 8, seed: int = 0,
                   examples: int = 3) -> dict:
    """All three metrics on validation `sequences` [n, seq_len]; returns metrics, sample sizes and examples."""
    sequences = np.asarray(sequences)
    if sequences.ndim != 2 or len(sequences) == 0:
        raise ValueError(f"validation sequences must be a non-empty [n, seq_len] array, got shape {sequences.shape}")
    prompt_len, cont_len = split_lengths(sequences.shape[1], prompt_tokens, continuation_tokens)
    eos = tokenizer.eos_token_id

    ppl_rows = sample_rows(sequences, perplexity_sequences, seed)
    ce = mean_cross_entropy(model, ppl_rows, batch_size)

    rouge_rows = as_token_tensor(sample_rows(sequences, rouge_samples, seed + 1))
    prompts = rouge_rows[:, :prompt_len]
    held_out = rouge_rows[:, prompt_len:prompt_len + cont_len].tolist()
    references = [tokenizer.decode(r, skip_special_tokens=True) for r in held_out]
    continued = generate(model, prompts, cont_len, eos_token_id=eos, batch_size=batch_size)
    predictions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in continued]

    tox_prompts = as_token_tensor(sample_rows(sequences, toxicity_samples, seed + 2))[:, :prompt_len]
    sampled = generate(model, tox_prompts, max_new_tokens, sample=True, temperature=temperature, top_k=top_k,
                       seed=seed, eos_token_id=eos, batch_size=batch_size)
    generations = [tokenizer.decode(ids, skip_special_tokens=True) for ids in sampled]
    tox = toxicity_probabilities(generations)

    return {
        "metrics": {
            "perplexity": math.exp(ce),
            "cross_entropy": ce,
            "rouge_l": rouge_l(predictions, references),
            "toxicity_rate": sum(p > toxicity_threshold for p in tox) / len(tox),
            "toxicity_max_prob": max(tox),
        },
        "samples": {
            "perplexity_sequences": len(ppl_rows),
            "perplexity_tokens": int(len(ppl_rows) * (sequences.shape[1] - 1)),
            "rouge_samples": len(predictions),
            "toxicity_samples": len(generations),
            "validation_sequences": len(sequences),
        },
        "lengths": {"seq_len": int(sequences.shape[1]), "prompt_tokens": prompt_len,
                    "continuation_tokens": cont_len, "max_new_tokens": max_new_tokens},
        "examples": [
            {"prompt": tokenizer.decode(p, skip_special_tokens=True), "reference": r, "prediction": c}
            for p, r, c in zip(prompts[:examples].tolist(), references, predictions)
        ],
        "sampled_generations": [{"text": g, "toxicity": p} for g, p in list(zip(generations, tox))[:examples]],
    }
