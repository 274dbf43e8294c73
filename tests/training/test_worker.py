"""Real torchrun + DeepSpeed (ZeRO-2, gloo, 2 processes on CPU): a kill -9 mid-run, damaged checkpoints,
then a relaunch that resumes from the newest checkpoint that verifies."""

import re
import threading

from llm_assets.training import checkpoints, launcher
from resources.tracking import TrackingResource
from tests.training.test_launcher import TINY


def test_relaunch_after_kill_9_resumes_from_the_newest_sound_checkpoint(tiny_inputs, tmp_path, cache_dir):
    tracking = TrackingResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                artifact_root=str(tmp_path / "mlruns"))
    run_id = tracking.start_run("kill-test", {"test": "kill9"})
    ckpt = tmp_path / "ckpt"
    cfg = launcher.RunConfig(
        run_name="kill-test", checkpoint_dir=str(ckpt), shard_dir=tiny_inputs["shard_dir"],
        tokenizer_dir=tiny_inputs["tokenizer_dir"], model=TINY, nproc=2, zero_stage=2, micro_batch_size=4,
        max_steps=120, save_every=5, log_every=1, lr=3e-3, warmup_steps=2,
        mlflow_tracking_uri=tracking.tracking_uri, mlflow_run_id=run_id)
    launcher.validate(cfg)
    cmd = launcher.torchrun_command(cfg.write(ckpt / "run.json"), cfg.nproc)
    env = launcher.training_env(torch_extensions_dir=cache_dir / "torch_extensions", tmp_dir=tmp_path / "tmp",
                                cache_dir=cache_dir / "xdg")

    first_log: list[str] = []
    proc = launcher.start(cmd, env)
    reader = threading.Thread(target=launcher.stream, args=(proc, first_log.append), daemon=True)
    reader.start()
    second_tag = ckpt / checkpoints.tag_name(10) / checkpoints.MANIFEST
    assert launcher.wait_for(second_tag, proc, timeout=300), "\n".join(first_log[-40:])
    launcher.kill_group(proc)  # SIGKILL to torchrun and both workers at once
    proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == -9
    assert not (ckpt / "hf_final").exists(), "the run finished before the kill; raise max_steps"
    killed_at = max(int(m.group(1)) for line in first_log if (m := re.search(r"step (\d+)/120 loss", line)))

    # The newest sealed checkpoint gets a flipped byte; a newer tag is left half-written (no manifest).
    *_, older, newest = checkpoints.tags(ckpt)
    victim = next(p for p in sorted(newest.iterdir()) if p.name.endswith("model_states.pt"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    half_written = ckpt / checkpoints.tag_name(999)
    half_written.mkdir()
    (half_written / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"partial")

    second_log: list[str] = []
    launcher.run(cmd, env, on_line=second_log.append)
    resumed = [int(m.group(1)) for line in second_log if (m := re.search(r"resumed from .* at step (\d+)", line))]
    assert set(resumed) == {int(older.name.removeprefix("step"))}, "\n".join(second_log[-40:])
    assert resumed[0] <= killed_at
    skipped = [line for line in second_log if "skipping checkpoint" in line]
    assert "step00000999 has no llmops_checkpoint.json" in skipped[0]
    assert f"{victim} is corrupt" in skipped[1]
    logged_lines = [m for line in second_log if (m := re.search(r"step (\d+)/120 loss ([\d.]+) lr ([\d.e+-]+)", line))]
    assert [int(m.group(1)) for m in logged_lines] == list(range(resumed[0] + 1, 121))  # not from 1 again
    first_loss, first_lr = float(logged_lines[0].group(2)), float(logged_lines[0].group(3))
    assert first_lr > 1e-3  # the LR schedule resumed too (a restarted warmup would start at 0)
    assert (ckpt / "hf_final" / "model.safetensors").exists()

    history = tracking.client().get_metric_history(run_id, "loss")
    logged = sorted({m.step for m in history})
    assert logged == list(range(1, 121))  # one continuous curve across the crash
    by_step = {m.step: m.value for m in history}
    assert first_loss < by_step[1] - 0.1  # weights were restored, not re-initialised
    assert by_step[120] < by_step[1]


def _losses(lines: list[str]) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for line in lines if (m := re.search(r"step (\d+)/\d+ loss ([\d.]+)", line))}


def test_resumed_run_draws_the_same_dropout_masks_as_an_uninterrupted_one(tiny_inputs, tmp_path, cache_dir):
    """GPT-2's dropout (0.1) draws on torch's RNG: with every rank's RNG state in the checkpoint, the steps after
    a resume have exactly the losses of the same steps in a run that never stopped."""
    import shutil

    env = launcher.training_env(torch_extensions_dir=cache_dir / "torch_extensions", tmp_dir=tmp_path / "tmp",
                                cache_dir=cache_dir / "xdg")

    def run(ckpt) -> list[str]:
        cfg = launcher.RunConfig(
            run_name="rng", checkpoint_dir=str(ckpt), shard_dir=tiny_inputs["shard_dir"],
            tokenizer_dir=tiny_inputs["tokenizer_dir"], model=TINY, nproc=2, zero_stage=2, micro_batch_size=4,
            max_steps=12, save_every=4, keep_checkpoints=3, log_every=1, lr=3e-3, warmup_steps=2)
        lines: list[str] = []
        launcher.run(launcher.torchrun_command(cfg.write(ckpt / "run.json"), cfg.nproc), env, lines.append)
        return lines

    whole = run(tmp_path / "whole")
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed_dir)
    for later in (checkpoints.tag_name(8), checkpoints.tag_name(12), "hf_final"):
        shutil.rmtree(resumed_dir / later)
    resumed = run(resumed_dir)
    assert any("resumed from checkpoint" in line and "at step 4" in line for line in resumed), "\n".join(resumed[-20:])
    assert not any("holds no RNG state" in line for line in resumed)
    after = _losses(resumed)
    assert sorted(after) == list(range(5, 13))
    assert after == {s: loss for s, loss in _losses(whole).items() if s > 4}
