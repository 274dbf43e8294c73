"""int8 and int4 weights for a Hugging Face causal LM on CPU, without calibration data.

int8: PyTorch dynamic quantization. int4: optimum-quanto weight-only quantization (see the end).

`torch.ao.quantization.quantize_dynamic` swaps `nn.Linear` for int8 `DynamicQuantizedLinear` (weights
int8, activations quantized on the fly) and `nn.Embedding` for an int8 `QuantizedEmbedding` (per-row
scales). GPT-2 keeps its projections in `transformers.pytorch_utils.Conv1D` (a Linear with the weight
transposed), which quantize_dynamic does not know, so those are first rewritten as `nn.Linear`.

int4: `optimum.quanto.quantize(weights=qint4)` packs every Linear's weight as 4-bit groups with a
float scale and shift; activations stay float. The embedding (tied to `lm_head` in GPT-2) stays fp32,
so small-vocabulary models shrink less than 8x.

On disk a quantized model is a directory with `model_int8.pt` or `model_int4.pt` (the quantized state
dict, loadable with `torch.load(weights_only=True)`), the source's `config.json`, generation config and
tokenizer files, and `quantization.json`. `load_quantized` rebuilds either. (torch 2.13 points users of
the eager-mode int8 APIs to torchao; they still work here and need no extra package.)

GPU route (the `gpu` extra, not run on CPU): vLLM loads FP8 (`vllm serve DIR --quantization fp8`,
weights cast at load) and AWQ/GPTQ int4 checkpoints made by llm-compressor or AutoAWQ/GPTQModel with
calibration data; ServingResource(backend="vllm") serves such a directory unchanged.
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
INT4_WEIGHTS = "model_int4.pt"
METHODS = ("int8", "int4")
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


def quantize_int4(model: nn.Module) -> nn.Module:
    """Quanto int4 weights (groups of 128, or the whole row when narrower) for every Linear but `lm_head`."""
    from optimum.quanto import freeze, qint4, quantize

    model = conv1d_to_linear(model).eval()
    quantize(model, weights=qint4, exclude=["lm_head"])  # lm_head shares GPT-2's embedding matrix
    freeze(model)
    return model


def quantize_model_dir(src: str | Path, dst: str | Path, method: str = "int8") -> dict:
    """Quantize the Hugging Face model in `src` into `dst` ("int8" or "int4"); returns sizes and their ratio."""
    if method not in METHODS:
        raise ValueError(f"quantization method {method!r} is not one of {list(METHODS)}")
    src, dst = Path(src), Path(dst)
    fp32_bytes = dir_size(src, "*.safetensors") or dir_size(src, "*.bin")
    if not (src / "config.json").exists() or not fp32_bytes:
        raise FileNotFoundError(f"{src} is not a Hugging Face model directory (needs config.json and "
                                f"*.safetensors or *.bin weights)")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    dst.mkdir(parents=True, exist_ok=True)
    # Keep the quantized model alive until saved: int8 state-dict tensors unpacked from fbgemm's packed
    # weights do not own their memory (a temporary model's garbage was saved as weights).
    if method == "int8":
        weights, qmodel = dst / WEIGHTS, quantize_int8(model)
        torch.save(qmodel.state_dict(), weights)
        info = {"method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8",
                "modules": ["Linear (incl. GPT-2 Conv1D)", "Embedding"]}
    else:
        from optimum.quanto import quantization_map

        weights, qmodel = dst / INT4_WEIGHTS, quantize_int4(model)
        torch.save(qmodel.state_dict(), weights)
        info = {"method": "optimum.quanto.quantize", "dtype": "qint4",
                "modules": ["Linear (incl. GPT-2 Conv1D) except lm_head"], "quantization_map": quantization_map(qmodel)}
    for name in COPIED:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    info.update({"source": str(src.resolve()), "fp32_bytes": fp32_bytes, "quantized_bytes": weights.stat().st_size})
    info["size_ratio"] = info["quantized_bytes"] / fp32_bytes
    (dst / "quantization.json").write_text(json.dumps(info, indent=2))
    return info


def load_int8(path: str | Path) -> nn.Module:
    """Rebuild the int8 model saved by `quantize_model_dir`."""
    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    model = quantize_int8(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    model.load_state_dict(torch.load(path / WEIGHTS, weights_only=True))
    return model.eval()


def load_int4(path: str | Path) -> nn.Module:
    """Rebuild the int4 model saved by `quantize_model_dir(..., method="int4")`."""
    from optimum.quanto import requantize

    path = Path(path)
    qmap = json.loads((path / "quantization.json").read_text())["quantization_map"]
    model = conv1d_to_linear(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32))
    requantize(model, torch.load(path / INT4_WEIGHTS, weights_only=True), qmap)
    model.tie_weights()
    return model.eval()


def load_quantized(path: str | Path) -> nn.Module:
    """The int8 or int4 model in `path`, whichever `quantization.json` says it is."""
    info_path = Path(path) / "quantization.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{path} has no quantization.json: not written by quantize_model_dir")
    dtype = json.loads(info_path.read_text())["dtype"]
    return load_int4(path) if dtype == "qint4" else load_int8(path)

