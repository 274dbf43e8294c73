"""Pruning a Hugging Face causal LM, saved as a normal model directory that any loader or server reads.

- "magnitude": global unstructured pruning (`torch.nn.utils.prune.global_unstructured`, L1): the
  `sparsity` share of smallest-magnitude weights across every projection of the transformer blocks is
  set to zero, then the masks are made permanent. Shapes do not change, so the dense files keep their
  size and CPU speed; a sparse kernel or sparse storage is where it pays.
- "structured": the `sparsity` share of each block's MLP neurons (hidden units of c_fc/c_proj) with the
  smallest weight norm is removed, and `n_inner` shrinks accordingly, so the model really gets smaller
  and faster. GPT-2 architectures only (their MLP is c_fc -> act -> c_proj).

Embeddings and the (tied) LM head are never pruned.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

METHODS = ("magnitude", "structured")
COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "chat_template.jinja", "vocab.json", "merges.txt")


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every Linear/Conv1D inside the transformer blocks (not embeddings or the LM head)."""
    out_emb = model.get_output_embeddings()
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Linear, Conv1D)) and m is not out_emb]


def sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights among the prunable weights."""
    weights = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` share of smallest |w| across all prunable weights (global L1), in place."""
    params = prunable_weights(model)
    if not params:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv1D weights to prune")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)  # bake the mask into the weight, so save_pretrained writes plain tensors
    return model


def _keep_columns(conv: Conv1D, keep: torch.Tensor) -> Conv1D:
    """A Conv1D with only output units `keep` (Conv1D's weight is [in, out])."""
    new = Conv1D(len(keep), conv.weight.shape[0])
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, keep])
        new.bias.copy_(conv.bias[keep])
    return new


def _keep_rows(conv: Conv1D, keep: torch.Tensor) -> Conv1D:
    """A Conv1D with only input units `keep`."""
    new = Conv1D(conv.weight.shape[1], len(keep))
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep, :])
        new.bias.copy_(conv.bias)
    return new


def structured_prune_mlp(model: nn.Module, amount: float) -> nn.Module:
    """Remove the `amount` share of every GPT-2 block's MLP neurons with the smallest ‖in‖·‖out‖, in place."""
    if getattr(model.config, "model_type", None) != "gpt2":
        raise ValueError(f"structured pruning supports GPT-2 models; this one is "
                         f"{getattr(model.config, 'model_type', type(model).__name__)!r} (use method='magnitude')")
    inner = model.config.n_inner or 4 * model.config.n_embd
    kept = max(1, round(inner * (1 - amount)))
    for block in model.transformer.h:
        mlp = block.mlp
        score = mlp.c_fc.weight.norm(dim=0) * mlp.c_proj.weight.norm(dim=1)
        keep = torch.sort(torch.topk(score, kept).indices).values
        mlp.c_fc, mlp.c_proj = _keep_columns(mlp.c_fc, keep), _keep_rows(mlp.c_proj, keep)
    model.config.n_inner = kept
    return model


def prune_model(model: nn.Module, method: str, amount: float) -> nn.Module:
    if method not in METHODS:
        raise ValueError(f"pruning method {method!r} is not one of {list(METHODS)}")
    if not 0.0 < amount < 1.0:
        raise ValueError(f"pruning sparsity must be in (0, 1), got {amount}")
    return magnitude_prune(model, amount) if method == "magnitude" else structured_prune_mlp(model, amount)


def prune_model_dir(src: str | Path, dst: str | Path, method: str = "magnitude", amount: float = 0.3) -> dict:
    """Prune the Hugging Face model in `src` into the model directory `dst`; returns what changed."""
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src} is not a Hugging Face model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    before = sum(p.numel() for p in model.parameters())
    model = prune_model(model, method, amount)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name in COPIED:
        if (src / name).exists() and not (tmp / name).exists():
            shutil.copy2(src / name, tmp / name)
    info = {"method": method, "requested_sparsity": amount, "weight_sparsity": sparsity(model),
            "parameters_before": before, "parameters": sum(p.numel() for p in model.parameters()),
            "nonzero_parameters": sum(int((p != 0).sum()) for p in model.parameters()), "source": str(src.resolve())}
    (tmp / "pruning.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return info
