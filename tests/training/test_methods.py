"""Real torchrun + DeepSpeed on CPU (2 processes): LoRA fine-tuning of a local base, and full training
under ZeRO 0 and ZeRO 3 with bf16 and activation checkpointing."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_assets.training import launcher
from tests.training.test_launcher import TINY


def train(cfg: launcher.RunConfig, tmp_path: Path, cache_dir: Path) -> tuple[dict, list[str]]:
    launcher.validate(cfg)
    env = launcher.training_env(torch_extensions_dir=cache_dir / "torch_extensions", tmp_dir=tmp_path / "tmp",
                                cache_dir=cache_dir / "xdg")
    lines: list[str] = []
    launcher.run(launcher.command_for(cfg, cfg.write(Path(cfg.checkpoint_dir) / "run.json")), env, lines.append)
    return json.loads((Path(cfg.checkpoint_dir) / "result.json").read_text()), lines


def test_lora_trains_adapters_only_and_exports_them_merged(tiny_base, tmp_path, cache_dir):
    ckpt = tmp_path / "ckpt"
    cfg = launcher.RunConfig(
        run_name="lora", checkpoint_dir=str(ckpt), shard_dir=tiny_base["shard_dir"],
        tokenizer_dir=tiny_base["tokenizer_dir"], model={"name": "tiny-base", "local_path": tiny_base["model_dir"]},
        method="lora", lora_r=4, lora_alpha=8, zero_stage=1, micro_batch_size=4, max_steps=12, save_every=6,
        log_every=3, lr=5e-3, warmup_steps=2)
    result, _ = train(cfg, tmp_path, cache_dir)
    assert result["method"] == "lora"
    assert 0 < result["trainable_parameters"] < result["parameters"] / 5

    final = ckpt / "hf_final"
    adapter = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
    base = load_file(str(Path(tiny_base["model_dir"]) / "model.safetensors"))
    merged = load_file(str(final / "model.safetensors"))
    assert set(merged) == set(base)  # a plain GPT-2 checkpoint: no lora_ keys left after merging
    attn = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(merged[attn], base[attn])  # the adapter's update is merged in
    assert torch.equal(merged["transformer.wpe.weight"], base["transformer.wpe.weight"])  # frozen stays put


@pytest.mark.parametrize("zero_stage, precision, activation_checkpointing", [(0, "fp32", False), (3, "bf16", True)])
def test_full_training_under_zero_stage(tiny_inputs, tmp_path, cache_dir, zero_stage, precision,
                                        activation_checkpointing):
    ckpt = tmp_path / "ckpt"
    cfg = launcher.RunConfig(
        run_name=f"zero{zero_stage}", checkpoint_dir=str(ckpt), shard_dir=tiny_inputs["shard_dir"],
        tokenizer_dir=tiny_inputs["tokenizer_dir"], model=TINY, zero_stage=zero_stage, precision=precision,
        activation_checkpointing=activation_checkpointing, micro_batch_size=4, max_steps=16, save_every=8,
        log_every=1, lr=3e-3, warmup_steps=2)
    result, lines = train(cfg, tmp_path, cache_dir)
    assert any(f"ZeRO {zero_stage}, {precision}" in line for line in lines)
    losses = [float(line.split(" loss ")[1].split()[0]) for line in lines if " loss " in line]
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4])
    assert result["trainable_parameters"] == result["parameters"]
    weights = load_file(str(ckpt / "hf_final" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())  # exported in fp32 whatever the precision
