"""int8 weights for a Hugging Face causal LM with PyTorch dynamic quantization (CPU, no calibration data).

`torch.ao.quantization.quantize_dynamic` swaps `nn.Linear` for int8 `DynamicQuantizedLinear` (weights
int8, activations quantized on the fly) and `nn.Embedding` for an int8 `QuantizedEmbedding` (per-row
scales). GPT-2 keeps its projections in `transformers.pytorch_utils.Conv1D` (a Linear with the weight
transposed), which quantize_dynamic does not know, so those are first rewritten as `nn.Linear`.

On disk an int8 model is a directory with `model_int8.pt` (the quantized state dict, loadable with
`torch.load(weights_only=True)`), the source's `config.json`, generation config and tokenizer files,
and `quantization.json`. `load_int8` rebuilds it. (torch 2.13 points users of these eager-mode APIs
to torchao; they still work here and need no extra package.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

WEIGHTS = "model_int8.pt"
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")


def conv1d_to_linear(module: nn.Module) -> nn.Module:
    """Replace every GPT-2 `Conv1D` in `module` (in place) by the equivalent `nn.Linear`."""
    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            n_in, n_out = child.weight.shape
            linear = nn.Linear(n_in, n_out, bias=child.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(child.weight.t())
                if child.bias is not None:
                    linear.bias.copy_(child.bias)
            setattr(module, name, linear)
        else:
            conv1d_to_linear(child)
    return module


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 copy of a float model's Linear (incl. Conv1D) and Embedding layers, for CPU inference."""
    model = conv1d_to_linear(model).eval()
    spec = {nn.Linear: default_dynamic_qconfig, nn.Embedding: float_qparams_weight_only_qconfig}
    return quantize_dynamic(model, spec, dtype=torch.qint8)


def dir_size(path: str | Path, pattern: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob(pattern))


def quantize_model_dir(src: str | Path, dst: str | Path) -> dict:
    """Quantize the Hugging Face model in `src` into `dst`; returns sizes and their ratio."""
    src, dst = Path(src), Path(dst)
    fp32_bytes = dir_size(src, "*.safetensors") or dir_size(src, "*.bin")
    if not (src / "config.json").exists() or not fp32_bytes:
        raise FileNotFoundError(f"{src} is not a Hugging Face model directory (needs config.json and "
                                f"*.safetensors or *.bin weights)")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    qmodel = quantize_int8(model)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(qmodel.state_dict(), dst / WEIGHTS)
    for name in COPIED:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    info = {"method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8",
            "modules": ["Linear (incl. GPT-2 Conv1D)", "Embedding"], "source": str(src.resolve()),
            "fp32_bytes": fp32_bytes, "int8_bytes": (dst / WEIGHTS).stat().st_size}
    info["size_ratio"] = info["int8_bytes"] / fp32_bytes
    (dst / "quantization.json").write_text(json.dumps(info, indent=2))
    return info


def load_int8(path: str | Path) -> nn.Module:
    """Rebuild the int8 model saved by `quantize_model_dir`."""
    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    model = quantize_int8(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    model.load_state_dict(torch.load(path / WEIGHTS, weights_only=True))
    return model.eval()


def compare_perplexity(fp32_dir: str | Path, int8_dir: str | Path, sequences) -> tuple[float, float]:
    """Perplexity of the float model and of its int8 copy on the same token sequences."""
    from llm_assets.evaluation.metrics import perplexity

    fp32 = AutoModelForCausalLM.from_pretrained(fp32_dir, dtype=torch.float32)
    return perplexity(fp32, sequences), perplexity(load_int8(int8_dir), sequences)
