"""Distillation: the loss on hand-made logits, the teacher checks, and a real run of the distilled_model asset
(torchrun + DeepSpeed ZeRO-2, 2 processes on CPU) whose student moves toward the teacher's distributions."""

from types import SimpleNamespace

import dagster as dg
import pytest
import torch

from llm_assets.optimization import assets, distill
from llm_assets.training import launcher, worker
from resources.settings import SettingsResource
from resources.tracking import TrackingResource
from tests.tiny_model import token_windows


def test_soft_target_kl_is_zero_for_equal_logits_and_grows_with_disagreement():
    t = torch.randn(2, 5, 11)
    assert distill.soft_target_kl(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distill.soft_target_kl(t + torch.randn(2, 5, 11), t, 2.0) > 0.01


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_distillation_loss_mixes_kl_and_lm_loss_by_alpha(alpha):
    student, teacher_logits = torch.randn(1, 4, 7), torch.randn(1, 4, 7)
    teacher = lambda input_ids: SimpleNamespace(logits=teacher_logits)  # noqa: E731 (a stand-in forward)
    out = SimpleNamespace(logits=student, loss=torch.tensor(3.0))
    kl = distill.soft_target_kl(student, teacher_logits, 2.0)
    got = distill.distillation_loss(out, teacher, torch.zeros(1, 4, dtype=torch.long), 2.0, alpha)
    assert got.item() == pytest.approx(alpha * 4 * kl.item() + (1 - alpha) * 3.0, rel=1e-5)


def test_student_spec_halves_the_teacher_unless_told(teacher):
    spec = distill.student_spec(teacher["model"].path)  # teacher: 1 layer, 32 wide, 2 heads
    assert spec["config"] == {"n_layer": 1, "n_embd": 16, "n_head": 1, "n_positions": 128}
    with pytest.raises(ValueError, match="n_embd=30 is not a multiple of n_head=4"):
        distill.student_spec(teacher["model"].path, n_embd=30, n_head=4)


def _run_cfg(teacher, tmp_path, **kw):
    return launcher.RunConfig(run_name="d", checkpoint_dir=str(tmp_path / "ckpt"), shard_dir=teacher["shards"].path,
                              tokenizer_dir=teacher["tokenizer"].path, model=distill.student_spec(teacher["model"].path),
                              **{"teacher_dir": teacher["model"].path, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"distill_temperature": 0.0}, "distill_temperature=0.0 must be positive"),
    ({"distill_alpha": 1.5}, r"distill_alpha=1.5 must be in \[0, 1\]"),
    ({"teacher_dir": "/nonexistent"}, "teacher_dir '/nonexistent' is not a Hugging Face model directory"),
])
def test_bad_distillation_settings_fail_before_torchrun(teacher, tmp_path, kw, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        launcher.validate(_run_cfg(teacher, tmp_path, **kw), cpus=2)


def test_teacher_with_another_vocabulary_is_refused(teacher, tmp_path):
    import json
    import shutil

    other = tmp_path / "teacher"
    shutil.copytree(teacher["model"].path, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 8}))
    with pytest.raises(ValueError, match="logits must index the same vocabulary"):
        launcher.validate(_run_cfg(teacher, tmp_path, teacher_dir=str(other)), cpus=2)


def test_distilled_model_asset_trains_a_smaller_student_toward_the_teacher(teacher, tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home = tmp_path / "home"
    settings = SettingsResource(home=str(home), cache_dir=str(cache_dir))
    tracking = TrackingResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "mlruns"))
    config = assets.DistillConfig(max_steps=40, micro_batch_size=4, lr=1e-2, warmup_steps=2, log_every=10,
                                  perplexity_sequences=4, speed_new_tokens=4)
    context = dg.build_asset_context()
    out = assets.distilled_model(context, config=config, exported_model=teacher["model"], eval_report={},
                                 token_shards=teacher["shards"], tokenizer=teacher["tokenizer"], settings=settings,
                                 tracking=tracking)
    meta = out.metadata
    assert out.value.method == "distilled" and out.value.size_ratio < 1
    assert meta["parameters"].value < meta["original_parameters"].value
    assert meta["steps"].value == 40 and "perplexity_delta" in meta and "| perplexity (validation) |" in meta[
        "comparison"].value
    run = tracking.client().get_run(meta["mlflow_run_id"].value)
    assert run.info.status == "FINISHED" and run.data.params["teacher_dir"] == teacher["model"].path

    # The trained student is closer to the teacher than the same student before training (same seed).
    student = AutoModelForCausalLM.from_pretrained(out.value.path).eval()
    cfg = _run_cfg(teacher, tmp_path)
    torch.manual_seed(cfg.seed)
    untrained = worker.build_model(cfg, AutoTokenizer.from_pretrained(teacher["tokenizer"].path)).eval()
    t_model = AutoModelForCausalLM.from_pretrained(teacher["model"].path).eval()
    ids = token_windows(teacher["model"].path, n=4, seq_len=32)
    with torch.no_grad():
        t_logits = t_model(input_ids=ids).logits
        kl_after = distill.soft_target_kl(student(input_ids=ids).logits, t_logits, 1.0)
        kl_before = distill.soft_target_kl(untrained(input_ids=ids).logits, t_logits, 1.0)
    assert kl_after < 0.7 * kl_before, (kl_after, kl_before)
