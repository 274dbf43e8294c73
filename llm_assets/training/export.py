"""Export a trained Hugging Face model directory: copy it into the model store and prove it loads and generates."""

from __future__ import annotations

import shutil
from pathlib import Path

REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def copy_model(src: str | Path, dst: str | Path) -> Path:
    """Copy a model directory to `dst` (replacing it), checking the files a server needs are there."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"model directory {src} does not exist")
    missing = [f for f in REQUIRED_FILES if not (src / f).exists()]
    if not any(src.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise FileNotFoundError(f"model directory {src} lacks {missing}")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def smoke_test(model_dir: str | Path, prompt: str = "The", max_new_tokens: int = 8) -> dict:
    """Load with AutoModelForCausalLM + AutoTokenizer, generate greedily; returns the sample and counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, inputs["input_ids"].shape[1]:]
    if len(new) == 0:
        raise RuntimeError(f"model in {model_dir} generated no tokens for prompt {prompt!r}")
    chat = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "completion": tok.decode(new, skip_special_tokens=True), "new_tokens": len(new),
            "parameters": sum(p.numel() for p in model.parameters()), "chat_prompt": chat}
