"""Quantized inference on CPU: int8 (torch dynamic) and int4 (optimum-quanto) against the fp32 model.

Measured in one run, baseline fp32:
- speed: generated tokens/s of greedy decoding (`metrics.generate`, no KV cache: 4 prompts of 32 tokens,
  32 new tokens each, one batch), the three models loaded in this process and timed in alternating
  order for `--rounds` rounds after a warm-up (the machine is shared, so load drifts; the median counts);
- memory: bytes of the model's tensors in memory (state dict, tied weights once) and, from a fresh
  process per precision, the resident-memory growth of loading it (RSS after load − before; int8 and
  int4 are rebuilt from an fp32 skeleton, so this includes allocator slack);
- size: bytes of the weight files; quality: perplexity on 32 held-out windows of 128 tokens.
Goal (issue 7): int8 ≥ 1.5× fp32 tokens/s or ≤ 0.5× memory, perplexity within +5%.

The model: a GPT-2 built from config, 4 layers × 256 wide, 4 heads, 128 context, with a byte-level BPE
tokenizer (vocab 4096) trained on the benchmark corpus (`benchmarks/corpus.py`: the venv's package
docs), trained in-process for `--train-steps` AdamW steps (batch 8 × 128) on that corpus (4.2M
parameters) so perplexity means something. Built once under `<home>/bench/quantization/` and reused.

    .venv/bin/python benchmarks/quantization.py               # ~6 min the first time, ~3 min after

Prints a table (precision, tokens/s, tensor MB, load RSS MB, weight-file MB, perplexity, ratios to fp32),
then `ratio <int8 tokens/s ÷ fp32 tokens/s>` last.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from corpus import corpus_path, default_cache  # noqa: E402

PRECISIONS = ("fp32", "int8", "int4")
MODEL_CONFIG = {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 128}
VOCAB, SEQ_LEN, DOCS = 4096, 128, 3000
PROMPTS, PROMPT_LEN, NEW_TOKENS, PPL_WINDOWS = 4, 32, 32, 32


def build_model(work: Path, train_steps: int) -> tuple[Path, Path]:
    """(fp32 model dir, validation windows .npy), trained on first use."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_assets.tokens import tokenizer as bpe

    model_dir, val_path = work / f"fp32-{train_steps}steps", work / "validation.npy"
    if (model_dir / "config.json").exists() and val_path.exists():
        return model_dir, val_path
    texts = [json.loads(line)["text"] for line in corpus_path(default_cache(), DOCS).open(encoding="utf-8")]
    tok = bpe.train_bpe(texts, vocab_size=VOCAB)
    tok_dir, _ = bpe.save_hf_tokenizer(tok, work / "tokenizers")
    eos = tok.token_to_id(bpe.EOS_TOKEN)
    ids = np.concatenate([np.array(e.ids + [eos]) for e in tok.encode_batch(texts)])
    windows = ids[:len(ids) // SEQ_LEN * SEQ_LEN].reshape(-1, SEQ_LEN)
    val, train = windows[-PPL_WINDOWS:], torch.from_numpy(windows[:-PPL_WINDOWS]).long()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos,
                                       **MODEL_CONFIG))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    start = time.monotonic()
    for step in range(1, train_steps + 1):
        batch = train[torch.randint(0, len(train), (8,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            print(f"train step {step}/{train_steps} loss {loss.item():.3f} ({time.monotonic() - start:.0f}s)",
                  flush=True)
    model.eval().save_pretrained(model_dir, safe_serialization=True)
    for f in Path(tok_dir).iterdir():
        shutil.copy2(f, model_dir / f.name)
    np.save(val_path, val)
    return model_dir, val_path


def load(model_dir: Path | str, precision: str):
    import torch
    from transformers import AutoModelForCausalLM

    from llm_assets.optimization import quantize

    if precision == "fp32":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return quantize.load_quantized(model_dir)


def tensor_bytes(model) -> int:
    """Bytes of the state dict's tensors (quantized ones at their packed size), shared storage counted once."""
    import torch

    seen, total = set(), 0
    values = [v for value in model.state_dict().values()  # torch int8 packs (weight, bias) tuples
              for v in (value if isinstance(value, tuple) else (value,))]
    for t in values:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def measure_load(model_dir: str, precision: str, val_path: str) -> dict:
    """In this (fresh) process: RSS growth of loading one precision, and its perplexity."""
    import psutil

    from llm_assets.evaluation import metrics

    rss = psutil.Process().memory_info().rss
    model = load(model_dir, precision)
    load_rss = psutil.Process().memory_info().rss - rss
    return {"load_rss_bytes": load_rss, "perplexity": metrics.perplexity(model, np.load(val_path))}


def run_measure_load(model_dir: Path, precision: str, val_path: Path) -> dict:
    root = str(HERE.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, __file__, "--measure", str(model_dir), "--precision", precision,
                           "--validation", str(val_path)], capture_output=True, text=True, env=env, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def speeds(dirs: dict[str, Path], val_path: Path, rounds: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median tokens/s per precision over `rounds` alternating rounds, and each model's tensor bytes."""
    import torch

    from llm_assets.evaluation import metrics

    models = {p: load(d, p) for p, d in dirs.items()}
    prompts = torch.from_numpy(np.load(val_path)[:PROMPTS, :PROMPT_LEN]).long()
    for m in models.values():
        metrics.generate(m, prompts, 2)  # warm-up
    rates: dict[str, list[float]] = {p: [] for p in models}
    for r in range(rounds):
        for p in (list(models) if r % 2 == 0 else list(reversed(models))):
            start = time.perf_counter()
            metrics.generate(models[p], prompts, NEW_TOKENS, batch_size=PROMPTS)
            rates[p].append(PROMPTS * NEW_TOKENS / (time.perf_counter() - start))
    return ({p: float(np.median(v)) for p, v in rates.items()}, {p: tensor_bytes(m) for p, m in models.items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6, help="timed generations per precision (median kept)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--validation", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_load(args.measure, args.precision, args.validation)))
        return 0

    from llm_assets.optimization import compare, quantize

    work = default_cache() / "quantization"
    fp32_dir, val_path = build_model(work, args.train_steps)
    dirs = {"fp32": fp32_dir}
    for method in ("int8", "int4"):
        dirs[method] = work / f"{method}-{args.train_steps}steps"
        quantize.quantize_model_dir(fp32_dir, dirs[method], method=method)
    tokens_per_s, in_memory = speeds(dirs, val_path, args.rounds)
    rows = {p: {**run_measure_load(d, p, val_path), "tokens_per_s": tokens_per_s[p], "tensor_bytes": in_memory[p],
                "weight_bytes": compare.weight_bytes(d)} for p, d in dirs.items()}
    base = rows["fp32"]
    print(f"model: GPT-2 {MODEL_CONFIG}, vocab {VOCAB}, trained {args.train_steps} steps; "
          f"{PROMPTS} prompts x {NEW_TOKENS} new tokens, median of {args.rounds}; perplexity on {PPL_WINDOWS} x {SEQ_LEN} tokens")
    print(f"{'precision':<10}{'tokens/s':>10}{'x fp32':>8}{'tensor MB':>11}{'x fp32':>8}{'load RSS MB':>13}"
          f"{'x fp32':>8}{'file MB':>9}{'x fp32':>8}{'perplexity':>12}{'change':>9}")
    for p in PRECISIONS:
        r = rows[p]
        print(f"{p:<10}{r['tokens_per_s']:>10.1f}{r['tokens_per_s'] / base['tokens_per_s']:>8.2f}"
              f"{r['tensor_bytes'] / 2**20:>11.2f}{r['tensor_bytes'] / base['tensor_bytes']:>8.2f}"
              f"{r['load_rss_bytes'] / 2**20:>13.1f}{r['load_rss_bytes'] / base['load_rss_bytes']:>8.2f}"
              f"{r['weight_bytes'] / 2**20:>9.2f}{r['weight_bytes'] / base['weight_bytes']:>8.2f}"
              f"{r['perplexity']:>12.2f}{100 * (r['perplexity'] / base['perplexity'] - 1):>+8.1f}%")
    print(f"ratio {rows['int8']['tokens_per_s'] / base['tokens_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
