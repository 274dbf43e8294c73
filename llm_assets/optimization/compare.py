"""What an optimized model costs and gains against its original: quality, size and speed, measured alike.

Every optimization asset (quantized, pruned, distilled) scores the original and its candidate with
`score_model` on the same inputs and reports `comparison(...)`:

- quality: perplexity on validation token sequences, and the held-out QA task (exact match and token F1
  of greedy answers, `evaluation/heldout/qa.jsonl`);
- size: bytes of the weight files on disk, and parameter count;
- speed: generated tokens/s of a fixed greedy generation on CPU (`metrics.generate`, the same plain
  decoding loop for float, int8, int4 and pruned models, batch of `speed_prompts` prompts).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from llm_assets.evaluation import metrics

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")


@dataclass(frozen=True)
class Scores:
    perplexity: float
    exact_match: float
    token_f1: float
    tokens_per_s: float
    weight_bytes: int
    parameters: int


def weight_bytes(model_dir: str | Path) -> int:
    """Bytes of the weight files (safetensors, bin, pt) directly in `model_dir`."""
    total = sum(f.stat().st_size for pattern in WEIGHT_PATTERNS for f in Path(model_dir).glob(pattern))
    if not total:
        raise FileNotFoundError(f"{model_dir} holds no weight files ({', '.join(WEIGHT_PATTERNS)})")
    return total


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of a float model; for int8/int4 modules, the elements of their quantized weights too."""
    n = sum(p.numel() for p in model.parameters())
    for module in model.modules():  # torch dynamic int8 keeps weights in packed params, not parameters
        if hasattr(module, "_packed_params") and hasattr(module, "weight") and callable(module.weight):
            n += module.weight().numel()
    return n


@torch.no_grad()
def generation_speed(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int, repeats: int = 2) -> float:
    """Generated tokens/s of greedy decoding of `prompts` [n, p] (best of `repeats`, after one warm-up step)."""
    metrics.generate(model, prompts[:1], 1)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        metrics.generate(model, prompts, new_tokens, batch_size=len(prompts))
        best = min(best, time.perf_counter() - start)
    return prompts.shape[0] * new_tokens / best


def score_model(model: torch.nn.Module, tokenizer, sequences: np.ndarray, model_dir: str | Path, *,
                qa_items: list[dict] | None = None, speed_prompts: int = 4, prompt_tokens: int = 16,
                new_tokens: int = 16) -> Scores:
    """Perplexity on `sequences` [n, seq_len], QA scores, generation speed and weight size of one model."""
    ids = metrics.as_token_tensor(sequences)
    qa = metrics.qa_scores(model, tokenizer, qa_items if qa_items is not None else metrics.load_qa())
    prompts = ids[:speed_prompts, :min(prompt_tokens, ids.shape[1])]
    return Scores(perplexity=metrics.perplexity(model, ids), exact_match=qa["exact_match"],
                  token_f1=qa["token_f1"], tokens_per_s=generation_speed(model, prompts, new_tokens),
                  weight_bytes=weight_bytes(model_dir), parameters=count_parameters(model))


def comparison(original: Scores, candidate: Scores) -> dict:
    """Flat metrics of the candidate with its deltas and ratios against the original."""
    return {
        **asdict(candidate),
        **{f"original_{k}": v for k, v in asdict(original).items()},
        "perplexity_delta": candidate.perplexity - original.perplexity,
        "perplexity_change_pct": 100 * (candidate.perplexity / original.perplexity - 1),
        "exact_match_delta": candidate.exact_match - original.exact_match,
        "token_f1_delta": candidate.token_f1 - original.token_f1,
        "size_ratio": candidate.weight_bytes / original.weight_bytes,
        "speedup": candidate.tokens_per_s / original.tokens_per_s,
    }


def comparison_table(original: Scores, candidate: Scores, name: str) -> str:
    """A markdown table: one row per measure, original vs `name`."""
    rows = [("perplexity (validation)", "{:.3f}"), ("exact_match (QA)", "{:.3f}"), ("token_f1 (QA)", "{:.3f}"),
            ("tokens_per_s (CPU)", "{:,.1f}"), ("weight_bytes", "{:,}"), ("parameters", "{:,}")]
    lines = [f"| measure | original | {name} | ratio |", "|---|---:|---:|---:|"]
    for label, fmt in rows:
        key = label.split(" ")[0]
        a, b = getattr(original, key), getattr(candidate, key)
        ratio = f"{b / a:.3f}" if a else "-"
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    return "\n".join(lines)
