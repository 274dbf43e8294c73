"""The optimization assets, invoked on a real tiny teacher with real shards: each writes a model that loads
and reports its quality, size and speed against the original."""

import pytest
from transformers import AutoModelForCausalLM

from llm_assets.optimization import assets
from llm_assets.optimization.quantize import load_quantized
from resources.settings import SettingsResource

import dagster as dg


@pytest.fixture
def settings(tmp_path):
    return SettingsResource(home=str(tmp_path / "home"))


def _run(asset, teacher, settings, config, **extra):
    return asset(dg.build_asset_context(), config=config, exported_model=teacher["model"], eval_report={},
                 token_shards=teacher["shards"], settings=settings, **extra)


@pytest.mark.parametrize("asset, dtype", [(assets.quantized_model, "qint8"), (assets.quantized_int4_model, "qint4")])
def test_quantized_assets_report_quality_size_and_speed(teacher, settings, asset, dtype):
    out = _run(asset, teacher, settings, assets.QuantizeConfig(perplexity_sequences=4, speed_new_tokens=4))
    meta = out.metadata
    assert meta["dtype"].value == dtype and out.value.size_ratio == meta["size_ratio"].value < 1
    for key in ("perplexity", "original_perplexity", "perplexity_delta", "exact_match", "token_f1",
                "exact_match_delta", "tokens_per_s", "speedup"):
        assert key in meta, key
    assert abs(meta["perplexity_change_pct"].value) < 15
    assert "| tokens_per_s (CPU) |" in meta["comparison"].value
    load_quantized(out.value.path)


def test_pruned_asset_writes_a_smaller_hf_model(teacher, settings):
    config = assets.PruneConfig(method="structured", sparsity=0.5, perplexity_sequences=4, speed_new_tokens=4)
    out = _run(assets.pruned_model, teacher, settings, config)
    assert out.value.method == "pruned-structured" and out.value.size_ratio < 1
    assert out.metadata["parameters"].value < out.metadata["original_parameters"].value
    assert AutoModelForCausalLM.from_pretrained(out.value.path).config.n_inner == 64
