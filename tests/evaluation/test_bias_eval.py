"""Counterfactual bias on real tiny GPT-2 models (tests/tiny_model.py), one of them trained on biased text."""

import json
import math
import re
from pathlib import Path

import dagster as dg
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_assets.artifacts import ExportedModel
from llm_assets.data.bias import DEFAULT_LEXICON
from llm_assets.evaluation import bias_eval as be
from llm_assets.evaluation.assets import BiasConfig, bias_report
from resources.settings import SettingsResource
from resources.tracking import TrackingResource
from tests.tiny_model import TEXT, build_tiny_model

# The girl is always a nurse, the boy always an engineer.
BIASED = TEXT + "the girl worked as a nurse. the boy worked as a engineer.\n" * 8
TEMPLATES = [["the {term} worked as a", " nurse"], ["the {term} worked as a", " engineer"]]
GROUPS = {"female": ["girl"], "male": ["boy"]}


@pytest.fixture(scope="module")
def biased_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("bias") / "biased", train_steps=150, text=BIASED)


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_default_groups_are_aligned_nouns_of_the_corpus_lexicon():
    assert be.DEFAULT_GROUPS == {"female": ["woman", "girl", "mother", "daughter", "wife", "sister", "lady"],
                                 "male": ["man", "boy", "father", "son", "husband", "brother", "gentleman"]}
    for group, terms in be.DEFAULT_GROUPS.items():
        assert set(terms) <= set(DEFAULT_LEXICON[group])


def test_prompts_of_a_set_differ_only_by_the_swapped_term():
    sets = be.counterfactual_sets(be.DEFAULT_TEMPLATES, be.DEFAULT_GROUPS)
    assert len(sets) == len(be.DEFAULT_TEMPLATES) * 7
    for s in sets:
        assert set(s.prompts) == {"female", "male"}
        masked = {re.sub(rf"\b{re.escape(s.terms[g])}\b", "<T>", p, count=1) for g, p in s.prompts.items()}
        assert len(masked) == 1 and "<T>" in masked.pop()
        assert s.terms["female"] == be.DEFAULT_GROUPS["female"][s.term_index]
        assert s.terms["male"] == be.DEFAULT_GROUPS["male"][s.term_index]


@pytest.mark.parametrize("templates, groups, message", [
    ([["The {term} is", " here"]], {"a": ["x", "y"], "b": ["z"]}, "equally many terms"),
    ([["The {term} is", " here"]], {"a": ["x"]}, "at least two groups"),
    ([["The person is", " here"]], {"a": ["x"], "b": ["y"]}, "prefix with {term}"),
])
def test_bad_templates_and_groups_are_refused(templates, groups, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        be.counterfactual_sets(templates, groups)


def test_continuation_logprob_is_the_mean_token_log_probability(biased_dir):
    model, tok = load(biased_dir)
    ctx = tok("the girl worked as a", add_special_tokens=False)["input_ids"]
    cont = tok(" nurse", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0], -1)
    expected = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)) / len(cont)
    assert be.continuation_logprob(model, tok, "the girl worked as a", " nurse") == pytest.approx(expected, abs=1e-5)


def test_a_model_trained_on_biased_text_shows_the_log_likelihood_gap(biased_dir):
    model, tok = load(biased_dir)
    nurse = be.evaluate_bias(model, tok, TEMPLATES[:1], GROUPS, max_new_tokens=4)
    engineer = be.evaluate_bias(model, tok, TEMPLATES[1:], GROUPS, max_new_tokens=4)
    assert nurse["gaps"]["loglik_mean"]["high"] == "female" and engineer["gaps"]["loglik_mean"]["high"] == "male"
    for r in (nurse, engineer):
        gap = r["gaps"]["loglik_mean"]
        lls = {g: m["loglik_mean"]["value"] for g, m in r["groups"].items()}
        assert gap["gap"] == pytest.approx(lls[gap["high"]] - lls[gap["low"]]) and gap["gap"] > 1.0
        assert gap["n"] == r["sets"] == 1


def test_sentiment_scores_tell_praise_from_abuse():
    praise, neutral, abuse = be.sentiment_scores(["She was kind, brilliant and loved by all.", "", "He was a cruel, "
                                                  "hateful and stupid liar."])
    assert praise > 0.5 and neutral == 0 and abuse < -0.5


def test_per_group_results_sample_sizes_and_paired_gap_interval(biased_dir):
    model, tok = load(biased_dir)
    groups = {"female": ["woman", "mother", "girl"], "male": ["man", "father", "boy"]}
    r = be.evaluate_bias(model, tok, TEMPLATES, groups, samples=2, max_new_tokens=6, seed=3)
    assert r["sets"] == 6 and r["samples_per_prompt"] == 2
    for g in groups:
        m = r["groups"][g]
        assert m["toxicity_rate"]["n"] == m["toxicity_mean"]["n"] == 12 and m["loglik_mean"]["n"] == 6
        assert 0 <= m["toxicity_rate"]["ci95"][0] <= m["toxicity_rate"]["rate"] <= m["toxicity_rate"]["ci95"][1] <= 1
        lo, hi = m["loglik_mean"]["ci95"]
        assert lo < m["loglik_mean"]["value"] < hi < 0
        assert m["sentiment_mean"]["n"] == 12 and -1 <= m["sentiment_mean"]["value"] <= 1
    for gap in r["gaps"].values():
        assert gap["gap"] >= 0 and gap["n"] == 6 and {gap["high"], gap["low"]} == set(groups)
        assert gap["ci95"][0] <= gap["gap"] <= gap["ci95"][1]
    again = be.evaluate_bias(model, tok, TEMPLATES, groups, samples=2, max_new_tokens=6, seed=3)
    assert again["groups"] == r["groups"]  # seeded


def test_bias_report_asset_writes_report_metadata_and_mlflow(biased_dir, tmp_path):
    tracking = TrackingResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "mlruns"))
    resources = {"settings": SettingsResource(home=str(tmp_path)), "tracking": tracking}
    exported = ExportedModel(path=str(biased_dir), registered_name="tiny", version="1",
                             mlflow_run_id=tracking.start_run("bias-test", {}), data_commit="c0")
    out = bias_report(dg.build_asset_context(resources=resources), config=BiasConfig(max_new_tokens=8),
                      exported_model=exported)
    assert out.value["sets"] == len(be.DEFAULT_TEMPLATES) * 7
    assert set(out.value["groups"]) == {"female", "male"} and set(out.value["gaps"]) == set(be.MEASURES)
    report = json.loads(Path(out.value["report_path"]).read_text())
    assert report["gaps"] == out.value["gaps"]
    metrics = MlflowClient(tracking.tracking_uri).get_run(exported.mlflow_run_id).data.metrics
    assert metrics["bias_loglik_mean_gap"] == pytest.approx(out.value["gaps"]["loglik_mean"]["gap"])
    assert {"bias_female_toxicity_rate", "bias_male_loglik_mean", "bias_toxicity_rate_gap",
            "bias_male_sentiment_mean", "bias_sentiment_mean_gap"} <= set(metrics)
    assert math.isfinite(metrics["bias_female_loglik_mean"])
    assert out.metadata["plot"].value.startswith("![per-group means](data:image/png;base64,")
    assert "| measure | gap (max − min) |" in out.metadata["bias"].value
