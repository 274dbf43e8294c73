"""Resource benchmark of one model version per precision: latency, tokens/s, peak memory, size on disk.

- Served (fp32, the exported directory): streaming `/v1/completions` requests against an
  OpenAI-compatible server at each concurrency level. A level sends `rounds × concurrency` requests,
  so every client slot stays busy. Per request: seconds to the first streamed token (TTFT) and to the
  end of the answer; completion tokens from the last chunk's `usage` (else one per chunk with text).
  A level's tokens/s is its completion tokens over its wall time. Peak RSS is sampled on the server's
  process tree; GPU memory too, through `nvidia-smi`, where there is one (vLLM preallocates most of the
  GPU, so on GPU that figure is its reservation, not what the requests needed).
- In-process (fp32 and int8): `transformers serve` loads Hugging Face weights only, so the deployment's
  dynamic-int8 model (optimization/quantize.py) is measured in a fresh process that runs `generate`
  (KV cache, greedy) on the same prompts one at a time, beside fp32 measured the same way. Peak RSS is
  that process's; `model_rss_mb` is the peak minus its RSS after imports (for int8 this includes the
  float model `load_int8` builds before quantizing). CPU only: dynamic int8 is a CPU kernel.
- Size on disk: the files directly in the model directory (the int8 copy kept under it not counted).

Everything else running on the machine skews these figures (the `lifecycle` job runs sibling assets in
parallel); the asset records the load average beside them.

The in-process measurement is this module's `main()`; it prints one JSON document as its last line:

    python -m llm_assets.evaluation.resource_bench --model-dir .llmops/models/llmops-demo/v1 \\
        --precision fp32 --max-tokens 16 --prompt "The license" --prompt "Data flows"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

from llm_assets.monitoring.load import PROMPTS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = ("fp32", "int8")
MB = 1024 * 1024


@dataclass(frozen=True)
class Timing:
    """One request: seconds to its first token and to its full answer, and its completion tokens."""

    ttft_s: float
    latency_s: float
    tokens: int


def dir_bytes(path: str | Path) -> int:
    """Bytes of the regular files directly in `path`."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def cycle(prompts: Sequence[str], n: int) -> list[str]:
    return [prompts[i % len(prompts)] for i in range(n)]


def check_context(model_dir: str | Path, prompts: Sequence[str], max_tokens: int) -> None:
    """Refuse a workload past the model's context window (`transformers serve`'s batching worker dies on one)."""
    from transformers import AutoConfig, AutoTokenizer

    window = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
    longest = max(len(AutoTokenizer.from_pretrained(model_dir)(p)["input_ids"]) for p in prompts)
    if window and longest + max_tokens > window:
        raise ValueError(f"a prompt of {longest} tokens + max_tokens {max_tokens} exceeds the context of "
                         f"{window} tokens of {model_dir}; lower max_tokens")


def level_stats(timings: Sequence[Timing], wall_s: float, concurrency: int) -> dict:
    """Percentiles of TTFT and latency, and aggregate tokens/s, of one concurrency level."""
    ttft = np.array([t.ttft_s for t in timings])
    latency = np.array([t.latency_s for t in timings])
    tokens = sum(t.tokens for t in timings)
    return {"concurrency": concurrency, "n": len(timings),
            "ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p95_s": float(np.percentile(ttft, 95)),
            "latency_p50_s": float(np.percentile(latency, 50)), "latency_p95_s": float(np.percentile(latency, 95)),
            "tokens": tokens, "wall_s": wall_s, "tokens_per_s": tokens / wall_s}


# ---- served: streaming requests and the server's memory

async def _stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> Timing:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    first, chunks, usage = None, 0, None
    start = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise RuntimeError(f"streaming completion at {url} answered HTTP {resp.status_code}: {resp.text[:500]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            choices = event.get("choices") or []
            if choices and first is None:
                first = time.perf_counter()
            chunks += sum(bool(c.get("text")) for c in choices)
            usage = event.get("usage") or usage
    end = time.perf_counter()
    if first is None:
        raise RuntimeError(f"streaming completion at {url} for prompt {prompt!r} sent no token")
    tokens = usage["completion_tokens"] if usage and usage.get("completion_tokens") is not None else chunks
    return Timing(first - start, end - start, int(tokens))


async def _level(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
                 timeout: float) -> tuple[list[Timing], float]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def one(prompt: str) -> Timing:
            async with sem:
                return await _stream(client, url, model, prompt, max_tokens)

        start = time.perf_counter()
        timings = await asyncio.gather(*[one(p) for p in prompts])
        return list(timings), time.perf_counter() - start


def gpu_bytes(pids: set[int]) -> int | None:
    """GPU memory held by `pids` (nvidia-smi's per-process `used_memory`); None without a GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    done = subprocess.run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    total = 0
    for line in done.stdout.splitlines():
        pid, _, mib = (part.strip() for part in line.partition(","))
        if pid.isdigit() and mib.isdigit() and int(pid) in pids:
            total += int(mib) * MB
    return total


class PeakMemory:
    """Peak RSS of a process and its descendants (and their GPU memory), sampled on a thread while the
    `with` block runs; `idle_rss` is the RSS when it started."""

    def __init__(self, pid: int, interval: float = 0.05, gpu_interval: float = 0.5):
        self.root = psutil.Process(pid)
        self.interval, self.gpu_interval = interval, gpu_interval
        self.idle_rss = self.peak_rss = self._rss()
        self.peak_gpu = gpu_bytes(self._pids())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def _pids(self) -> set[int]:
        return {p.pid for p in self._procs()}

    def _rss(self) -> int:
        total = 0
        for p in self._procs():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:  # a worker that exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        last_gpu = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                self.peak_rss = max(self.peak_rss, self._rss())
                if self.peak_gpu is not None and time.monotonic() - last_gpu >= self.gpu_interval:
                    self.peak_gpu = max(self.peak_gpu, gpu_bytes(self._pids()) or 0)
                    last_gpu = time.monotonic()
            except psutil.NoSuchProcess:  # the server died: its requests fail and say why
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_served(url: str, model: str, pid: int, model_dir: str | Path, *, concurrency: Sequence[int] = (1, 4, 16),
                 rounds: int = 2, max_tokens: int = 16, prompts: Sequence[str] = PROMPTS, timeout: float = 300.0,
                 log: Callable[[str], None] | None = None) -> dict:
    """The fp32 row: each concurrency level against the server at `url` (its process: `pid`)."""
    if rounds < 1 or max_tokens < 1 or not concurrency or min(concurrency) < 1:
        raise ValueError(f"need rounds, max_tokens and every concurrency >= 1, got rounds={rounds}, "
                         f"max_tokens={max_tokens}, concurrency={list(concurrency)}")
    check_context(model_dir, prompts, max_tokens)
    levels = []
    with PeakMemory(pid) as memory:
        for c in concurrency:
            timings, wall_s = asyncio.run(_level(url.rstrip("/"), model, cycle(prompts, rounds * c), c, max_tokens,
                                                 timeout))
            levels.append(level_stats(timings, wall_s, c))
            if log:
                lv = levels[-1]
                log(f"concurrency {c}: {lv['n']} requests, {lv['tokens_per_s']:.1f} tokens/s, "
                    f"TTFT p50 {lv['ttft_p50_s']:.3f}s, latency p95 {lv['latency_p95_s']:.3f}s")
    size = dir_bytes(model_dir)
    return {"precision": "fp32", "mode": "served", "size_bytes": size, "size_mb": size / MB,
            "peak_rss_mb": memory.peak_rss / MB, "idle_rss_mb": memory.idle_rss / MB,
            "gpu_memory_mb": memory.peak_gpu / MB if memory.peak_gpu is not None else None, "levels": levels}


# ---- in-process: `generate` in a fresh process

def generate_timings(model, tokenizer, prompts: Sequence[str], max_tokens: int) -> list[Timing]:
    """Greedy `generate` on each prompt in turn, timing its first new token through a streamer."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.puts: list[float] = []

        def put(self, value):  # first call: the prompt; then one per new token
            self.puts.append(time.perf_counter())

        def end(self):
            pass

    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        clock = Clock()
        start = time.perf_counter()
        with torch.no_grad():
            seq = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, streamer=clock)
        end = time.perf_counter()
        out.append(Timing(clock.puts[1] - start, end - start, int(seq.shape[1] - ids["input_ids"].shape[1])))
    return out


def bench_in_process(model_dir: str | Path, precision: str, prompts: Sequence[str], *, max_tokens: int = 16,
                     work_dir: str | Path | None = None, timeout: float = 600.0) -> dict:
    """A row for `precision` ("fp32", or "int8": `model_dir` quantized like the deployment does), measured
    by `main()` in a fresh process at concurrency 1."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with tempfile.TemporaryDirectory(prefix="bench-", dir=work_dir) as tmp:
        path = Path(model_dir)
        if precision == "int8":
            from llm_assets.optimization.quantize import quantize_model_dir

            path = Path(tmp) / "int8"
            quantize_model_dir(model_dir, path)
        cmd = [sys.executable, "-m", "llm_assets.evaluation.resource_bench", "--model-dir", str(path),
               "--precision", precision, "--max-tokens", str(max_tokens), *[a for p in prompts for a in ("--prompt", p)]]
        pythonpath = os.pathsep.join(p for p in [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")] if p)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"in-process {precision} benchmark of {model_dir} exited {done.returncode}:\n"
                               f"{done.stderr[-2000:]}")
        size = dir_bytes(path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    timings = [Timing(**t) for t in result["timings"]]
    return {"precision": precision, "mode": "inprocess", "size_bytes": size, "size_mb": size / MB,
            "peak_rss_mb": result["peak_rss"] / MB, "model_rss_mb": (result["peak_rss"] - result["baseline_rss"]) / MB,
            "gpu_memory_mb": None, "levels": [level_stats(timings, result["wall_s"], 1)]}


# ---- report

def flat_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """`<precision>_<mode>_<metric>` (per level: `..._c<concurrency>`), e.g. `fp32_served_tokens_per_s_c16`."""
    out: dict[str, float] = {}
    for row in rows:
        key = f"{row['precision']}_{row['mode']}"
        for name in ("size_mb", "peak_rss_mb", "idle_rss_mb", "model_rss_mb", "gpu_memory_mb"):
            if row.get(name) is not None:
                out[f"{key}_{name}"] = float(row[name])
        for lv in row["levels"]:
            for name in ("n", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s", "tokens_per_s"):
                out[f"{key}_{name}_c{lv['concurrency']}"] = float(lv[name])
    return out


def table_md(rows: Sequence[dict]) -> str:
    lines = ["| precision | mode | concurrency | n | TTFT p50 s | TTFT p95 s | latency p50 s | latency p95 s "
             "| tokens/s | peak RSS MB | GPU MB | size MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        gpu = f"{row['gpu_memory_mb']:.0f}" if row.get("gpu_memory_mb") is not None else "-"
        for lv in row["levels"]:
            lines.append(f"| {row['precision']} | {row['mode']} | {lv['concurrency']} | {lv['n']} "
                         f"| {lv['ttft_p50_s']:.3f} | {lv['ttft_p95_s']:.3f} | {lv['latency_p50_s']:.3f} "
                         f"| {lv['latency_p95_s']:.3f} | {lv['tokens_per_s']:.1f} | {row['peak_rss_mb']:.0f} "
                         f"| {gpu} | {row['size_mb']:.2f} |")
    return "\n".join(lines)


def throughput_plot(rows: Sequence[dict], path: Path, title: str = "") -> Path:
    """Tokens/s against concurrency, one line (or point) per precision and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    levels = sorted({lv["concurrency"] for row in rows for lv in row["levels"]})
    for row in rows:
        ax.plot([lv["concurrency"] for lv in row["levels"]], [lv["tokens_per_s"] for lv in row["levels"]],
                marker="o", label=f"{row['precision']} {row['mode']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("completion tokens/s")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.evaluation.resource_bench",
                                     description="Time greedy generation of one model in this process.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt", action="append", default=None, help="repeatable; default: the load prompts")
    args = parser.parse_args(argv)
    prompts = args.prompt or list(PROMPTS)

    import resource

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.optimization.quantize import load_int8

    baseline = psutil.Process().memory_info().rss
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if args.precision == "int8":
        model = load_int8(args.model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    generate_timings(model, tokenizer, prompts[:1], 2)  # warm-up, as the server's first request is
    start = time.perf_counter()
    timings = generate_timings(model, tokenizer, prompts, args.max_tokens)
    wall_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"timings": [asdict(t) for t in timings], "wall_s": wall_s, "baseline_rss": baseline,
                      "peak_rss": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
