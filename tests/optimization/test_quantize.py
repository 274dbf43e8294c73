"""int8 (torch dynamic) and int4 (optimum-quanto) quantization of a real tiny GPT-2: smaller on disk, loads, generates,
perplexity close."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from llm_assets.optimization.quantize import (INT4_WEIGHTS, WEIGHTS, conv1d_to_linear, load_int8, load_quantized,
                                            quantize_model_dir)
from llm_assets.evaluation.metrics import generate, perplexity
from tests.tiny_model import build_tiny_model, token_windows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", train_steps=60)


def test_conv1d_to_linear_keeps_the_outputs(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = token_windows(model_dir, n=2, seq_len=16)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        after = conv1d_to_linear(model)(input_ids=ids).logits
    assert isinstance(model.transformer.h[0].attn.c_attn, nn.Linear)
    assert torch.allclose(before, after, atol=1e-5)


def test_int8_model_is_smaller_loads_and_generates(model_dir, tmp_path):
    info = quantize_model_dir(model_dir, tmp_path / "int8")
    assert (tmp_path / "int8" / WEIGHTS).exists() and (tmp_path / "int8" / "tokenizer.json").exists()
    assert info["quantized_bytes"] < info["fp32_bytes"] and info["size_ratio"] < 0.6

    qmodel = load_int8(tmp_path / "int8")
    assert isinstance(qmodel.transformer.h[0].mlp.c_fc, torch.ao.nn.quantized.dynamic.Linear)
    seqs = token_windows(model_dir, n=4, seq_len=32)
    out = generate(qmodel, seqs[:2, :8], 6)
    assert [len(o) for o in out] == [6, 6]

    fp32 = perplexity(AutoModelForCausalLM.from_pretrained(model_dir), seqs)
    int8 = perplexity(qmodel, seqs)
    assert abs(int8 - fp32) / fp32 < 0.1


def test_quantize_rejects_a_directory_without_weights(tmp_path, model_dir):
    src = tmp_path / "empty"
    src.mkdir()
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        quantize_model_dir(src, tmp_path / "out")


def test_int4_model_is_smaller_loads_from_disk_and_keeps_perplexity(model_dir, tmp_path):
    from optimum.quanto import QLinear

    info = quantize_model_dir(model_dir, tmp_path / "int4", method="int4")
    assert info["dtype"] == "qint4" and (tmp_path / "int4" / INT4_WEIGHTS).exists()
    assert info["quantized_bytes"] < info["fp32_bytes"]  # the fp32 embedding dominates this tiny model

    qmodel = load_quantized(tmp_path / "int4")  # a fresh model rebuilt from the files alone
    assert isinstance(qmodel.transformer.h[0].mlp.c_fc, QLinear)
    assert qmodel.lm_head.weight.data_ptr() == qmodel.transformer.wte.weight.data_ptr()
    seqs = token_windows(model_dir, n=4, seq_len=32)
    fp32 = perplexity(AutoModelForCausalLM.from_pretrained(model_dir), seqs)
    assert abs(perplexity(qmodel, seqs) - fp32) / fp32 < 0.15
    assert [len(o) for o in generate(qmodel, seqs[:2, :8], 5)] == [5, 5]


def test_unknown_quantization_method_is_named(model_dir, tmp_path):
    with pytest.raises(ValueError, match="'int3' is not one of"):
        quantize_model_dir(model_dir, tmp_path / "q", method="int3")
