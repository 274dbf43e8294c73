"""Plain PyTorch DDP on a `launcher.RunConfig`: the baseline of benchmarks/train.py (no DeepSpeed).

    torchrun --standalone --nproc_per_node 2 -m benchmarks.ddp_train --config run.json

Trains what `llm_assets.training.worker` trains from the same run.json: the model from `build_model`
(same seed, so the same initial weights), the same `Batches` (batch k of rank r is the worker's), torch
AdamW with the worker's hyperparameters (betas 0.9/0.95, eps 1e-8, weight decay on every parameter, as
DeepSpeed applies it to the one group it is given), DeepSpeed's WarmupCosineLR curve step for step,
gradient clipping by global norm, gloo. What it leaves out is what a plain loop would: it reduces the
loss across ranks only on the steps it logs, and saves no checkpoint. It logs `step N/M loss … tokens/s …`
lines like the worker's, and ends with `done: {json}` (steps, final loss, median per-step tokens/s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

import numpy as np

from llm_assets.training.launcher import RunConfig


def lr_ratio(it: int, cfg: RunConfig) -> float:
    """DeepSpeed's WarmupCosineLR (linear warmup from 0, cosine to `min_lr_ratio`) after `it` scheduler steps."""
    if it < 0:
        return 0.0
    warmup = max(2, cfg.warmup_steps)
    if it < warmup:
        return it / warmup
    progress = min(1.0, (it - warmup + 1) / max(1, cfg.max_steps - warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2


def train(cfg: RunConfig) -> dict:
    import torch
    import torch.distributed as dist
    import transformers
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoTokenizer

    from llm_assets.tokens.shards import open_split, read_manifest
    from llm_assets.training.worker import Batches, build_model

    transformers.logging.set_verbosity_error()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.seed)

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_dir)
    seq_len = read_manifest(cfg.shard_dir)["seq_len"]
    batches = Batches(open_split(cfg.shard_dir, "train", verify=cfg.verify_shards), cfg.seed)
    model = build_model(cfg, tokenizer)
    ddp = DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.weight_decay)

    per_rank = cfg.micro_batch_size * cfg.grad_accum_steps
    tokens_per_step = per_rank * world * seq_len
    rates: list[float] = []
    loss_value = float("nan")
    ddp.train()
    for step in range(1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        # DeepSpeed's scheduler sets the lr of step s after s - 2 steps of its own (it starts at -1).
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_ratio(step - 2, cfg)
        total = torch.zeros(())
        for micro in range(cfg.grad_accum_steps):
            first = (step - 1) * per_rank * world + rank * per_rank + micro * cfg.micro_batch_size
            x = torch.from_numpy(batches.get(first, cfg.micro_batch_size))
            # gradients are all-reduced on the last micro-batch only
            sync = micro == cfg.grad_accum_steps - 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                loss = ddp(input_ids=x, labels=x).loss
                (loss / cfg.grad_accum_steps).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rate = tokens_per_step / (time.perf_counter() - t0)
        rates.append(rate)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            dist.all_reduce(total)
            loss_value = total.item() / (world * cfg.grad_accum_steps)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step}")
            if rank == 0:
                lr = cfg.lr * lr_ratio(step - 1, cfg)
                print(f"[ddp rank 0] step {step}/{cfg.max_steps} loss {loss_value:.4f} lr {lr:.2e} "
                      f"tokens/s {rate:,.0f}", flush=True)

    result = {"steps": cfg.max_steps, "final_loss": loss_value, "tokens_per_s": float(np.median(rates)),
              "world_size": world}
    if rank == 0:
        print(f"[ddp rank 0] done: {json.dumps(result)}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run.json (a launcher.RunConfig)")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        print("run me under torchrun (see this module's docstring)", file=sys.stderr)
        return 2
    from llm_assets.training.worker import die_with_parent

    die_with_parent()
    train(RunConfig.read(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
