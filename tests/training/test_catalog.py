import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from llm_assets.training import catalog


@pytest.fixture(scope="module")
def candidates():
    return catalog.build_catalog(train_tokens=2_000_000)


def test_tiny_gpt2_parameter_count_matches_the_built_model(candidates):
    tiny = next(c for c in candidates if c["name"] == "tiny-gpt2")
    model = GPT2LMHeadModel(GPT2Config(**tiny["config"]))
    assert tiny["parameters"] == sum(p.numel() for p in model.parameters())
    assert tiny["context_length"] == 128


def test_every_candidate_count_matches_transformers_on_the_meta_device(candidates):
    """Llama/Qwen2/Mistral shapes too: built with no memory (meta tensors), nothing downloaded."""
    for c in candidates:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(c["model_type"], **c["config"]))
        assert c["parameters"] == sum(p.numel() for p in model.parameters()), c["name"]


def test_cost_and_memory_follow_the_formulas(candidates):
    tp = catalog.load_catalog()["throughput"]
    for c in candidates:
        assert c["train_flops"] == 6 * c["parameters"] * 2_000_000
        assert c["cpu_hours"] == pytest.approx(c["train_flops"] / float(tp["cpu_flops_per_s"]) / 3600)
        mem = c["serving_memory_gib"]
        assert mem["fp32"] > mem["bf16"] > mem["int8"] > mem["int4"] > 0
    mistral = next(c for c in candidates if c["name"] == "mistral-7b-v0.1")
    assert 7.2e9 < mistral["parameters"] < 7.3e9 and mistral["serving_memory_gib"]["bf16"] > 13
    assert "| tiny-gpt2 | gpt2 |" in catalog.catalog_markdown(candidates)


def test_default_rule_picks_tiny_gpt2_and_says_why_others_are_out(candidates):
    chosen, reasons = catalog.select_base_model(candidates)
    assert chosen["name"] == "tiny-gpt2"
    assert reasons[0].startswith("tiny-gpt2: chosen")
    assert any(r.startswith("llama-3.2-1b: excluded") and "license llama3.2" in r for r in reasons)
    assert any(r.startswith("mistral-7b-v0.1: excluded") and "parameters" in r for r in reasons)


def test_rule_respects_license_and_size(candidates):
    bigger, _ = catalog.select_base_model(candidates, max_cpu_hours=1.0)
    assert bigger["name"] == "small-gpt2"  # largest that fits once the budget allows it
    big, _ = catalog.select_base_model(candidates, max_parameters=2_000_000_000, max_cpu_hours=1e6)
    assert big["name"] == "qwen2.5-0.5b"  # llama-3.2-1b is larger but its license is not allowed
    llama, _ = catalog.select_base_model(candidates, license_allow=["mit", "apache-2.0", "llama3.2"],
                                         max_parameters=2_000_000_000, max_cpu_hours=1e6)
    assert llama["name"] == "llama-3.2-1b"
    with pytest.raises(ValueError, match="license"):
        catalog.select_base_model(candidates, license_allow=["gpl-3.0"])
    with pytest.raises(ValueError, match="not in license_allow"):
        catalog.select_base_model(candidates, name="llama-3.2-1b")
    with pytest.raises(ValueError, match="not in the catalog"):
        catalog.select_base_model(candidates, name="gpt-5")
    named, reasons = catalog.select_base_model(candidates, name="gpt2-124m")
    assert named["name"] == "gpt2-124m" and "chosen by name" in reasons[0]


def test_local_path_must_be_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="local_path .*missing"):
        catalog.local_model_spec(tmp_path / "missing")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        catalog.local_model_spec(tmp_path / "m")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)).save_pretrained(tmp_path / "m")
    spec = catalog.local_model_spec(tmp_path / "m")
    assert spec["source"] == "local" and spec["model_type"] == "gpt2"
    assert spec["parameters"] == json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"] * 32 + \
        1024 * 32 + (12 * 32 * 32 + 13 * 32) + 2 * 32
