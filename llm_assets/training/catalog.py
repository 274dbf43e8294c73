"""The base-model catalog: candidates described by config, their size, cost and memory, and the choice.

Parameter counts are computed from the config (no weights, no download), with the standard shapes:

    gpt2:                 V·d + P·d + L·(4d² + 2d·I + 9d + I) + 2d            (lm_head tied to wte)
    llama/mistral/qwen2:  V·d·(1 or 2 if untied) + L·(d·(H+2K)·h + H·h·d + 3d·I + 2d) + d  (+ q/k/v biases for qwen2)

Training cost is the usual 6·N·T FLOPs (forward + backward, Kaplan et al. 2020) divided by an
effective throughput stated in catalog.yaml. Serving memory is weights at each precision plus a
KV cache for one full-length sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
GIB = 1024**3
LLAMA_LIKE = ("llama", "mistral", "qwen2")


def load_catalog(path: str | Path = CATALOG_PATH) -> dict:
    data = yaml.safe_load(Path(path).read_text())
    names = [c["name"] for c in data["candidates"]]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate candidate names in {path}: {names}")
    for c in data["candidates"]:
        for key in ("name", "license", "model_type", "config"):
            if key not in c:
                raise ValueError(f"catalog entry {c.get('name', c)!r} in {path} lacks {key!r}")
    return data


def _gpt2_shape(cfg: dict) -> dict:
    d = cfg.get("n_embd", 768)
    return {"d": d, "layers": cfg.get("n_layer", 12), "vocab": cfg.get("vocab_size", 50257),
            "context": cfg.get("n_positions", 1024), "inner": cfg.get("n_inner") or 4 * d}


def count_parameters(model_type: str, cfg: dict) -> int:
    """Trainable parameters of a causal LM of `model_type` built from `cfg` (tied weights counted once)."""
    if model_type == "gpt2":
        s = _gpt2_shape(cfg)
        d, i = s["d"], s["inner"]
        per_layer = 4 * d * d + 2 * d * i + 9 * d + i
        return s["vocab"] * d + s["context"] * d + s["layers"] * per_layer + 2 * d
    if model_type in LLAMA_LIKE:
        d, inner = cfg["hidden_size"], cfg["intermediate_size"]
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads") or heads
        hd = cfg.get("head_dim") or d // heads
        attn = d * heads * hd + 2 * d * kv * hd + heads * hd * d
        if model_type == "qwen2":
            attn += heads * hd + 2 * kv * hd  # q, k, v biases
        elif cfg.get("attention_bias"):
            attn += heads * hd + 2 * kv * hd + d
        per_layer = attn + 3 * d * inner + 2 * d
        embed = cfg["vocab_size"] * d
        lm_head = 0 if cfg.get("tie_word_embeddings", model_type == "qwen2") else embed
        return embed + lm_head + cfg["num_hidden_layers"] * per_layer + d
    raise ValueError(f"cannot count parameters of model_type {model_type!r}; known: gpt2, {', '.join(LLAMA_LIKE)}")


def context_length(model_type: str, cfg: dict) -> int:
    return cfg.get("n_positions", 1024) if model_type == "gpt2" else cfg.get("max_position_embeddings", 2048)


def kv_bytes_per_token(model_type: str, cfg: dict, bytes_per_value: float) -> float:
    """Key + value cache for one token across all layers."""
    if model_type == "gpt2":
        s = _gpt2_shape(cfg)
        return 2 * s["layers"] * s["d"] * bytes_per_value
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * kv * hd * bytes_per_value


def describe(entry: dict, train_tokens: int, throughput: dict) -> dict:
    """A catalog entry with parameters, context length, training cost and serving memory filled in."""
    model_type, cfg = entry["model_type"], entry["config"]
    n = count_parameters(model_type, cfg)
    ctx = context_length(model_type, cfg)
    flops = 6.0 * n * train_tokens
    memory = {}
    for precision, b in BYTES_PER_PARAM.items():
        kv = kv_bytes_per_token(model_type, cfg, 4.0 if precision == "fp32" else 2.0) * ctx
        memory[precision] = round((n * b + kv) / GIB, 4)
    return {
        **entry,
        "parameters": n,
        "context_length": ctx,
        "train_tokens": train_tokens,
        "train_flops": flops,
        "cpu_hours": flops / float(throughput["cpu_flops_per_s"]) / 3600,
        "gpu_hours": flops / float(throughput["gpu_flops_per_s"]) / 3600,
        "serving_memory_gib": memory,
    }


def build_catalog(train_tokens: int, path: str | Path = CATALOG_PATH) -> list[dict]:
    data = load_catalog(path)
    return [describe(c, train_tokens, data["throughput"]) for c in data["candidates"]]


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def catalog_markdown(candidates: list[dict]) -> str:
    head = ("| name | type | params | context | license | CPU-hours | GPU-hours | fp32 GiB | bf16 GiB "
            "| int8 GiB | int4 GiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {c['name']} | {c['model_type']} | {_human(c['parameters'])} | {c['context_length']} | {c['license']} "
        f"| {c['cpu_hours']:.3g} | {c['gpu_hours']:.3g} | "
        + " | ".join(f"{c['serving_memory_gib'][p]:.3g}" for p in BYTES_PER_PARAM) + " |\n"
        for c in candidates)
    return head + rows


def local_model_spec(local_path: str | Path) -> dict:
    """A catalog-style entry for a Hugging Face model directory on disk (to fine-tune)."""
    path = Path(local_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"base_model local_path {str(local_path)!r} is not a directory")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"base_model local_path {str(local_path)!r} has no config.json "
                                "(expected a Hugging Face model directory)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise FileNotFoundError(f"base_model local_path {str(local_path)!r} has no weights (*.safetensors or *.bin)")
    cfg = json.loads(cfg_file.read_text())
    model_type = cfg.get("model_type", "unknown")
    try:
        params = count_parameters(model_type, cfg)
    except (ValueError, KeyError):
        params = None
    return {"name": path.name, "source": "local", "local_path": str(path.resolve()), "license": "unknown",
            "model_type": model_type, "config": cfg, "parameters": params,
            "context_length": context_length(model_type, cfg)}


def select_base_model(candidates: list[dict], *, name: str = "", license_allow: list[str] | tuple = ("mit", "apache-2.0"),
                      max_parameters: int = 5_000_000, max_cpu_hours: float = 0.1) -> tuple[dict, list[str]]:
    """The largest candidate within the license allow-list, size cap and CPU-hour budget.

    An explicit `name` skips the size and budget limits (the person asked for it) but not the license
    allow-list. Returns the chosen entry and the reasons, one line per candidate considered.
    """
    allowed = {lic.lower() for lic in license_allow}
    by_name = {c["name"]: c for c in candidates}
    if name:
        if name not in by_name:
            raise ValueError(f"base_model name {name!r} is not in the catalog; candidates: {sorted(by_name)}")
        c = by_name[name]
        if c["license"].lower() not in allowed:
            raise ValueError(f"base_model name {name!r} has license {c['license']!r}, not in license_allow {sorted(allowed)}")
        return c, [f"{name}: chosen by name (license {c['license']} allowed; {_human(c['parameters'])} parameters, "
                   f"{c['cpu_hours']:.3g} CPU-hours)"]
    eligible, reasons = [], []
    for c in candidates:
        why = []
        if c["license"].lower() not in allowed:
            why.append(f"license {c['license']} not in {sorted(allowed)}")
        if c["parameters"] > max_parameters:
            why.append(f"{_human(c['parameters'])} parameters > max {_human(max_parameters)}")
        if c["cpu_hours"] > max_cpu_hours:
            why.append(f"{c['cpu_hours']:.3g} CPU-hours > budget {max_cpu_hours:g}")
        if why:
            reasons.append(f"{c['name']}: excluded ({'; '.join(why)})")
        else:
            eligible.append(c)
    if not eligible:
        raise ValueError("no catalog candidate fits license_allow/max_parameters/max_cpu_hours:\n" + "\n".join(reasons))
    chosen = max(eligible, key=lambda c: (c["parameters"], c["name"]))
    for c in eligible:
        verdict = "chosen: largest eligible" if c is chosen else "eligible, smaller than the chosen one"
        reasons.append(f"{c['name']}: {verdict} ({_human(c['parameters'])} parameters, {c['cpu_hours']:.3g} CPU-hours, "
                       f"license {c['license']})")
    return chosen, sorted(reasons, key=lambda r: not r.startswith(chosen["name"] + ": chosen"))
