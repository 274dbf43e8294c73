"""DeepSpeed training worker: one process per rank, started by torchrun.

    torchrun --standalone --nproc_per_node 2 -m llm_assets.training.worker --config run.json

CPU-sized run (2 processes, tiny GPT-2, ~1 minute on 2 cores):

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TORCH_EXTENSIONS_DIR=.llmops/cache/torch_extensions \\
        torchrun --standalone --nproc_per_node 2 -m llm_assets.training.worker \\
        --config .llmops/checkpoints/<run_name>/run.json

run.json is a `launcher.RunConfig`. The worker builds the model (from a catalog config, or from a
local Hugging Face directory, optionally wrapped in LoRA adapters), reads the train shards by memmap
(`shard_dir`'s, then those of `extra_shard_dirs`, e.g. feedback examples, counted in `result.json`),
trains with `deepspeed.initialize` (ZeRO stage and precision from the config, torch AdamW, gloo on CPU),
logs loss / lr / tokens-per-second / memory to the MLflow run in the config (rank 0), saves a
DeepSpeed checkpoint every `save_every` steps and at the end, and resumes from the newest checkpoint
in `checkpoint_dir` that verifies (`checkpoints.py`), so a relaunch after `kill -9` continues where
it left off. With a `teacher_dir` the loss is the distillation loss against that frozen teacher's
logits (`optimization/distill.py`). At the end rank 0 writes the Hugging Face model (LoRA merged in; the adapter alone in
`adapter/`) plus tokenizer to `<checkpoint_dir>/hf_final/` and a `result.json` summary. On a terminal
rank 0 draws a progress bar.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from llm_assets.training import checkpoints
from llm_assets.training.launcher import RunConfig


def log(msg: str) -> None:
    print(f"[worker rank {os.environ.get('RANK', '0')}] {msg}", flush=True)


class Batches:
    """Deterministic batches from memmapped shards: batch k is a function of (seed, k) only.

    So a resumed run sees exactly the batches it would have seen without the crash. Each epoch walks
    all sequences in a fresh seeded permutation.
    """

    def __init__(self, arrays: list[np.ndarray], seed: int):
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])
        self.n = int(self.offsets[-1])
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _row(self, g: int) -> np.ndarray:
        epoch, i = divmod(g, self.n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        j = int(self._perms[epoch][i])
        s = int(np.searchsorted(self.offsets, j, side="right") - 1)
        return np.asarray(self.arrays[s][j - self.offsets[s]], dtype=np.int64)

    def get(self, start: int, count: int) -> np.ndarray:
        return np.stack([self._row(start + k) for k in range(count)])

    def drawn_from(self, rows: int, first: int) -> int:
        """How many of the first `rows` rows were sequences `first`… (a later shard set, e.g. feedback)."""
        epochs, rest = divmod(rows, self.n)
        perm = np.random.default_rng([self.seed, epochs]).permutation(self.n)[:rest]
        return epochs * (self.n - first) + int(np.count_nonzero(perm >= first))


def build_model(cfg: RunConfig, tokenizer):
    """A causal LM: from a catalog config (vocab and special ids from the tokenizer) or a local directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    if cfg.model.get("local_path"):  # launcher.validate checked that the tokenizer fits its vocabulary
        model = AutoModelForCausalLM.from_pretrained(cfg.model["local_path"], dtype=torch.float32)
    else:
        mc = AutoConfig.for_model(cfg.model["model_type"], **{**cfg.model.get("config", {}),
                                                              "vocab_size": len(tokenizer), **special})
        model = AutoModelForCausalLM.from_config(mc)
        # A small model decodes greedily into loops ("the following conditions and the following ...");
        # generation_config.json carries this to `generate()` callers. Not no_repeat_ngram_size: its
        # logits processor kills `transformers serve --continuous-batching`'s worker (transformers 5.24).
        model.generation_config.repetition_penalty = 1.3
    for k, v in special.items():
        setattr(model.config, k, v)
        if model.generation_config is not None:
            setattr(model.generation_config, k, v)
    if cfg.activation_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules or None))
    return model


DEEPSPEED_BUCKET = 500_000_000  # DeepSpeed's reduce/allgather bucket default, in elements


def deepspeed_config(cfg: RunConfig, trainable_parameters: int = DEEPSPEED_BUCKET, backend: str = "nccl") -> dict:
    # ZeRO 1/2 allocate a fresh reduce bucket every step: at the default 5e8 elements that is a 2 GB mapping
    # whose touched pages fault in anew each step; a model smaller than that gets a bucket of its own size.
    bucket = min(DEEPSPEED_BUCKET, max(trainable_parameters, 1_000_000))
    # gloo has no native reduce-scatter: one all-reduce of the bucket costs less CPU than DeepSpeed's emulation.
    reduce_scatter = backend != "gloo"
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "reduce_bucket_size": bucket,
                              "allgather_bucket_size": bucket, "reduce_scatter": reduce_scatter},
        "optimizer": {"type": "AdamW", "params": {
            "lr": cfg.lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": cfg.weight_decay,
            "torch_adam": True,  # DeepSpeed's fused CPU Adam would compile for ~45 s first
        }},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": cfg.max_steps, "warmup_num_steps": cfg.warmup_steps,
            "warmup_type": "linear", "warmup_min_ratio": 0.0, "cos_min_ratio": cfg.min_lr_ratio,
        }},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class MetricsLog:
    """Buffered MLflow metrics from rank 0 (one sqlite write per flush, not per step)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = None
        self.run_id = run_id
        self.buffer: list = []
        if run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri or None)

    def add(self, step: int, **values: float) -> None:
        from mlflow.entities import Metric

        if self.client is None:
            return
        ts = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), ts, step) for k, v in values.items()]

    def flush(self) -> None:
        if self.client is not None and self.buffer:
            for i in range(0, len(self.buffer), 900):  # MLflow caps a batch at 1000 metrics
                self.client.log_batch(self.run_id, metrics=self.buffer[i:i + 900])
            self.buffer = []


RNG_STATE = "rng_state_rank{rank}.pt"


def save_rng_state(path: Path) -> None:
    """This rank's random generators (dropout masks draw on torch's), so a resumed run draws what it would have."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, path)


def load_rng_state(path: Path) -> bool:
    """Restore what `save_rng_state` wrote; False when the checkpoint has none for this rank (another layout)."""
    import torch

    if not path.exists():
        return False
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return True


def save_checkpoint(engine, ckpt_dir: Path, step: int, keep: int, client_state: dict) -> None:
    """A DeepSpeed checkpoint and every rank's RNG state, sealed with its manifest and made `latest` once every
    rank wrote its part."""
    import torch.distributed as dist

    tag = checkpoints.tag_name(step)
    # save_latest=False: DeepSpeed's own `latest` is written by rank 0 before the other ranks finish
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    save_rng_state(ckpt_dir / tag / RNG_STATE.format(rank=dist.get_rank()))
    dist.barrier()
    if dist.get_rank() == 0:
        checkpoints.seal(ckpt_dir / tag, step)
        checkpoints.mark_latest(ckpt_dir, tag, keep)
    dist.barrier()


def resume_tag(ckpt_dir: Path) -> str | None:
    """Rank 0 picks the newest checkpoint that verifies (logging the ones it skips); every rank gets it."""
    import torch.distributed as dist

    choice = [None]
    if dist.get_rank() == 0:
        tag, skipped = checkpoints.newest_valid(ckpt_dir)
        for why in skipped:
            log(f"skipping checkpoint: {why}")
        choice = [tag]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


def save_hf_final(engine, model, tokenizer_dir: str, out_dir: Path, zero_stage: int) -> None:
    """Rank 0 writes the fp32 model (safetensors; LoRA merged, the adapter alone in adapter/) + tokenizer
    files; under ZeRO-3 every rank gathers first."""
    import contextlib

    import deepspeed
    import torch
    import torch.distributed as dist

    from llm_assets.tokens.tokenizer import TOKENIZER_FILES

    gather = (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
              if zero_stage == 3 else contextlib.nullcontext())
    with gather:
        if dist.get_rank() == 0:
            tmp = out_dir.with_name(out_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if hasattr(model, "merge_and_unload"):  # a peft model
                model.save_pretrained(str(tmp / "adapter"))
                model = model.merge_and_unload()
            model.to(torch.float32).save_pretrained(str(tmp))
            for name in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / name
                if src.exists():
                    shutil.copy2(src, tmp / name)
            shutil.rmtree(out_dir, ignore_errors=True)
            tmp.rename(out_dir)
    dist.barrier()


class Progress:
    """Step, loss, tokens/s, memory and ETA: a log line every `log_every` steps; on a terminal, a bar."""

    def __init__(self, cfg: RunConfig, start_step: int, enabled: bool):
        self.cfg, self.enabled = cfg, enabled
        self.step_times: list[float] = []
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def eta_s(self, step: int) -> float:
        recent = self.step_times[-20:]
        return float(np.median(recent)) * (self.cfg.max_steps - step) if recent else float("nan")

    def update(self, step: int, seconds: float, loss: float, lr: float, rate: float, memory_mb: float) -> None:
        self.step_times.append(seconds)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
        if step % self.cfg.log_every == 0 or step == self.cfg.max_steps:
            log(f"step {step}/{self.cfg.max_steps} loss {loss:.4f} lr {lr:.2e} tokens/s {rate:,.0f} "
                f"memory {memory_mb:,.0f}MB eta {self.eta_s(step):,.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def memory_mb() -> float:
    """This rank's peak accelerator memory on a GPU, else its resident memory, in MB."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return psutil.Process().memory_info().rss / 2**20


def train(cfg: RunConfig) -> dict:
    import warnings

    import deepspeed
    import torch
    import torch.distributed as dist
    import transformers
    from deepspeed.accelerator import get_accelerator
    from transformers import AutoTokenizer

    from llm_assets.tokens.shards import open_split, read_manifest

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's all_gather rename, once per step
    transformers.logging.set_verbosity_error()

    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.seed)
    ckpt_dir = Path(cfg.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_dir)
    seq_len = read_manifest(cfg.shard_dir)["seq_len"]
    train_arrays = open_split(cfg.shard_dir, "train", verify=cfg.verify_shards)
    n_main = sum(len(a) for a in train_arrays)
    for extra in cfg.extra_shard_dirs:  # appended after the main set: without extras the order is unchanged
        train_arrays += open_split(extra, "train", verify=cfg.verify_shards)
    batches = Batches(train_arrays, cfg.seed)
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=trainable,
                                                   config=deepspeed_config(cfg, n_trainable, get_accelerator().communication_backend_name()))
    teacher = None
    if cfg.teacher_dir:
        from llm_assets.optimization import distill

        teacher = distill.load_teacher(cfg.teacher_dir, engine.device)

    step, tokens_seen, loss_value = 0, 0, float("nan")
    tag = resume_tag(ckpt_dir)
    if tag is not None:
        path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        if path is None:
            raise RuntimeError(f"could not load checkpoint {ckpt_dir / tag}")
        step, tokens_seen = client_state["step"], client_state["tokens_seen"]
        loss_value = client_state.get("loss", float("nan"))
        log(f"resumed from checkpoint {path} at step {step}")
        if not load_rng_state(ckpt_dir / tag / RNG_STATE.format(rank=rank)):
            log(f"rank {rank}: {tag} holds no RNG state for it (written by another layout or an older version): "
                "its dropout masks will differ from an uninterrupted run's")
    if rank == 0:
        log(f"model {cfg.model.get('name')} {n_params} parameters ({n_trainable} trainable, {cfg.method}), "
            f"{batches.n} train sequences of {seq_len}"
            + (f" ({batches.n - n_main} from {', '.join(cfg.extra_shard_dirs)})" if cfg.extra_shard_dirs else "")
            + f", world {world}, ZeRO {cfg.zero_stage}, {cfg.precision}, "
            f"steps {step}->{cfg.max_steps}" + (f", distilling from {cfg.teacher_dir}" if teacher is not None else ""))

    metrics = MetricsLog(cfg.mlflow_tracking_uri, cfg.mlflow_run_id) if rank == 0 else MetricsLog("", "")
    progress = Progress(cfg, step, enabled=rank == 0)
    per_rank = cfg.micro_batch_size * cfg.grad_accum_steps
    tokens_per_step = per_rank * world * seq_len
    rates: list[float] = []
    engine.train()
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        total = torch.zeros((), device=engine.device)
        for micro in range(cfg.grad_accum_steps):
            first = step * per_rank * world + rank * per_rank + micro * cfg.micro_batch_size
            x = torch.from_numpy(batches.get(first, cfg.micro_batch_size)).to(engine.device)
            out = engine(input_ids=x, labels=x)
            loss = out.loss if teacher is None else distill.distillation_loss(
                out, teacher, x, cfg.distill_temperature, cfg.distill_alpha)
            engine.backward(loss)
            engine.step()
            total += loss.detach().float()
        dist.all_reduce(total)  # mean over ranks and micro-batches, for logging
        loss_value = total.item() / (world * cfg.grad_accum_steps)
        step += 1
        tokens_seen += tokens_per_step
        seconds = time.perf_counter() - t0
        rate = tokens_per_step / seconds
        rates.append(rate)
        lr = scheduler.get_last_lr()[0] if scheduler is not None else cfg.lr
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower lr={cfg.lr}")
        if rank == 0:
            mem = memory_mb()
            metrics.add(step, loss=loss_value, lr=lr, tokens_per_s=rate, tokens_seen=tokens_seen, memory_mb=mem)
            progress.update(step, seconds, loss_value, lr, rate, mem)
            if step % cfg.log_every == 0:
                metrics.flush()
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            metrics.flush()  # the metric history never lags the checkpoint it can resume from
            save_checkpoint(engine, ckpt_dir, step, cfg.keep_checkpoints,
                            {"step": step, "tokens_seen": tokens_seen, "loss": loss_value})
            if rank == 0:
                log(f"saved checkpoint step {step}")
    progress.close()

    save_hf_final(engine, engine.module, cfg.tokenizer_dir, ckpt_dir / "hf_final", cfg.zero_stage)
    extra_seen = batches.drawn_from(step * per_rank * world, n_main)  # a function of (seed, step): resume-proof
    result = {"steps": step, "final_loss": loss_value, "tokens_seen": tokens_seen, "parameters": n_params,
              "extra_sequences_seen": extra_seen,
              "trainable_parameters": n_trainable, "method": cfg.method,
              "tokens_per_s": float(np.median(rates)) if rates else None, "trained_steps_this_launch": len(rates),
              "world_size": world, "model_dir": str(ckpt_dir / "hf_final")}
    if rank == 0:
        if cfg.extra_shard_dirs:
            log(f"trained on {extra_seen} sequences from {', '.join(cfg.extra_shard_dirs)} "
                f"of {step * per_rank * world}")
            metrics.add(step, extra_sequences_seen=extra_seen)
        metrics.flush()
        (ckpt_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        log(f"done: {json.dumps(result)}")
    dist.barrier()
    dist.destroy_process_group()
    return result


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when torchrun dies (torchrun puts workers in their own session,
    so a kill -9 of torchrun would otherwise leave them training as orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run.json (a launcher.RunConfig)")
    args = parser.parse_args(argv)
    cfg = RunConfig.read(args.config)
    if "RANK" not in os.environ:
        print("run me under torchrun (see this module's docstring)", file=sys.stderr)
        return 2
    die_with_parent()
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
