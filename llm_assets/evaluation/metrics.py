"""Evaluation metrics for a causal language model on held-out token sequences and on fixed data.

- perplexity: exp of the mean next-token cross-entropy over every predicted position.
- bits per byte: the summed cross-entropy in bits over the UTF-8 bytes of the predicted text; unlike
  perplexity it does not depend on the tokenizer, so it compares models with different vocabularies.
- fixed held-out set (`heldout/fixed_text.txt`): perplexity and bits per byte on text that is the
  same for every data version.
- ROUGE-1/2/L and BLEU: the first `prompt_len` tokens of a validation sequence are the prompt, the
  next `continuation_len` tokens the reference; the model continues greedily and both are decoded.
  BLEU (NLTK's corpus BLEU, smoothed) is our choice for code too: the corpus mixes prose and code
  blocks, and CodeBLEU needs per-language parsers we do not have offline.
- exact match and token F1 (SQuAD normalization) on the fixed QA pairs (`heldout/qa.jsonl`).
- toxicity rate: the share of sampled generations that `profanity_check` (alt-profanity-check, a
  linear SVM on offensive-language data) scores above `threshold`.

Rates carry a Wilson 95% interval; every metric carries its sample size.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

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


HELDOUT_DIR = Path(__file__).with_name("heldout")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of a rate `successes / n` (95% by default); [0, 1] when n is 0."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, tokenizer, sequences: np.ndarray | torch.Tensor,
                  batch_size: int = 8) -> float:
    """Cross-entropy in bits of every predicted token, over the UTF-8 bytes those tokens decode to."""
    ids = as_token_tensor(sequences)
    nats = mean_cross_entropy(model, ids, batch_size) * ids.shape[0] * (ids.shape[1] - 1)
    n_bytes = sum(len(tokenizer.decode(row[1:], skip_special_tokens=True).encode()) for row in ids.tolist())
    if n_bytes == 0:
        raise ValueError("bits_per_byte: the sequences decode to no text")
    return nats / math.log(2) / n_bytes


def text_windows(tokenizer, text: str, window: int) -> torch.Tensor:
    """`text` tokenized and cut into consecutive windows of `window` tokens (the tail is dropped)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // window
    if n == 0:
        raise ValueError(f"text of {len(ids)} tokens is shorter than one window of {window}")
    return torch.tensor(ids[:n * window], dtype=torch.long).view(n, window)


def fixed_heldout_scores(model: torch.nn.Module, tokenizer, window: int, batch_size: int = 8,
                         path: Path = HELDOUT_DIR / "fixed_text.txt") -> dict:
    """Perplexity and bits per byte on the fixed held-out text, in windows of `window` tokens."""
    windows = text_windows(tokenizer, path.read_text(), window)
    ce = mean_cross_entropy(model, windows, batch_size)
    return {"perplexity": math.exp(ce), "bits_per_byte": bits_per_byte(model, tokenizer, windows, batch_size),
            "windows": int(windows.shape[0]), "tokens": int(windows.numel())}


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


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)}, {len(references)}")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 of predictions against references (rouge-score, stemmed)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {name: float(np.mean([s[kind].fmeasure for s in scores]))
            for name, kind in zip(("rouge_1", "rouge_2", "rouge_l"), kinds)}


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 of predictions against references (rouge-score, with stemming)."""
    return rouge(predictions, references)["rouge_l"]


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (NLTK, smoothing method 1) of whitespace tokens, in [0, 1]."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    _check_pairs(predictions, references)
    return float(corpus_bleu([[r.split()] for r in references], [p.split() for p in predictions],
                             smoothing_function=SmoothingFunction().method1))


def normalize_answer(text: str) -> list[str]:
    """SQuAD's normalization: lower case, no punctuation, no articles, split on whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold or common == 0:
        return float(pred == gold)
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def load_qa(path: Path = HELDOUT_DIR / "qa.jsonl") -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@torch.no_grad()
def qa_scores(model: torch.nn.Module, tokenizer, items: Sequence[dict], max_new_tokens: int = 12,
              examples: int = 3) -> dict:
    """Exact match (with its Wilson interval) and token F1 of greedy answers to `Context/Question/Answer:` prompts.

    The answer is the generation up to its first newline.
    """
    predictions = []
    for item in items:
        prompt = f"{item['context']}\nQuestion: {item['question']}\nAnswer:"
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        out = generate(model, ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id)[0]
        predictions.append(tokenizer.decode(out, skip_special_tokens=True).strip().split("\n")[0].strip())
    hits = sum(exact_match(p, i["answer"]) for p, i in zip(predictions, items))
    return {"exact_match": hits / len(items), "exact_match_ci95": wilson_interval(hits, len(items)),
            "token_f1": float(np.mean([token_f1(p, i["answer"]) for p, i in zip(predictions, items)])),
            "n": len(items),
            "examples": [{"question": i["question"], "answer": i["answer"], "prediction": p}
                         for p, i in list(zip(predictions, items))[:examples]]}


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


TOKENIZER_METRICS = ("bits_per_byte", "fixed_perplexity", "fixed_bits_per_byte", "rouge_1", "rouge_2", "rouge_l",
                     "bleu", "exact_match", "token_f1", "toxicity_rate", "toxicity_max_prob")
"""The metrics of `evaluate_model` that need the model's tokenizer (text in or out); perplexity does not."""


def tokenizer_problem(model_dir: str) -> str | None:
    """Why the tokenizer in `model_dir` cannot be used, or None when it loads and round-trips text."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ids = tokenizer("Hello world.", add_special_tokens=False)["input_ids"]
        if not ids or "Hello" not in tokenizer.decode(ids):
            return f"the tokenizer in {model_dir} does not round-trip text ('Hello world.' came back as " \
                   f"{tokenizer.decode(ids)!r}): a directory without tokenizer files?"
    except Exception as e:  # any load failure is the reason, reported instead of the metrics
        return f"the tokenizer in {model_dir} does not load: {type(e).__name__}: {str(e)[:300]}"
    return None


def evaluate_model(model: torch.nn.Module, tokenizer, sequences: np.ndarray, *, perplexity_sequences: int = 64,
                   rouge_samples: int = 16, toxicity_samples: int = 16, prompt_tokens: int = 32,
                   continuation_tokens: int = 32, max_new_tokens: int = 32, temperature: float = 1.0,
                   top_k: int = 50, toxicity_threshold: float = 0.5, batch_size: int = 8, seed: int = 0,
                   examples: int = 3) -> dict:
    """All three metrics on validation `sequences` [n, seq_len]; returns metrics, sample sizes and examples.

    With `tokenizer` None only perplexity and cross-entropy (token ids in, no text) are computed."""
    sequences = np.asarray(sequences)
    if sequences.ndim != 2 or len(sequences) == 0:
        raise ValueError(f"validation sequences must be a non-empty [n, seq_len] array, got shape {sequences.shape}")
    prompt_len, cont_len = split_lengths(sequences.shape[1], prompt_tokens, continuation_tokens)

    ppl_rows = sample_rows(sequences, perplexity_sequences, seed)
    ce = mean_cross_entropy(model, ppl_rows, batch_size)
    if tokenizer is None:
        return {"metrics": {"perplexity": math.exp(ce), "cross_entropy": ce}, "intervals": {},
                "samples": {"perplexity_sequences": len(ppl_rows),
                            "perplexity_tokens": int(len(ppl_rows) * (sequences.shape[1] - 1)),
                            "validation_sequences": len(sequences)},
                "lengths": {"seq_len": int(sequences.shape[1])}, "examples": [], "sampled_generations": [],
                "qa_examples": []}
    eos = tokenizer.eos_token_id

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
    toxic = sum(p > toxicity_threshold for p in tox)
    window = min(sequences.shape[1], getattr(model.config, "n_positions", None)
                 or getattr(model.config, "max_position_embeddings", sequences.shape[1]))
    fixed = fixed_heldout_scores(model, tokenizer, window, batch_size)
    qa = qa_scores(model, tokenizer, load_qa(), examples=examples)

    return {
        "metrics": {
            "perplexity": math.exp(ce),
            "cross_entropy": ce,
            "bits_per_byte": bits_per_byte(model, tokenizer, ppl_rows, batch_size),
            "fixed_perplexity": fixed["perplexity"],
            "fixed_bits_per_byte": fixed["bits_per_byte"],
            **rouge(predictions, references),
            "bleu": bleu(predictions, references),
            "exact_match": qa["exact_match"],
            "token_f1": qa["token_f1"],
            "toxicity_rate": toxic / len(tox),
            "toxicity_max_prob": max(tox),
        },
        "intervals": {"toxicity_rate": wilson_interval(toxic, len(tox)), "exact_match": qa["exact_match_ci95"]},
        "samples": {
            "fixed_heldout_tokens": fixed["tokens"],
            "qa_pairs": qa["n"],
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
        "sampled_generations": [{"prompt": tokenizer.decode(p, skip_special_tokens=True), "text": g, "toxicity": t}
                                for p, g, t in list(zip(tox_prompts.tolist(), generations, tox))[:examples]],
        "qa_examples": qa["examples"],
    }
