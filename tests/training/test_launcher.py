import shutil
import sys
from pathlib import Path

import pytest

from llm_assets.training import launcher

TINY = {"name": "tiny-gpt2", "model_type": "gpt2",
        "config": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128}}


def cfg(tiny_inputs, tmp_path, **kw):
    return launcher.RunConfig(run_name="t", checkpoint_dir=str(tmp_path / "ckpt"),
                              shard_dir=tiny_inputs["shard_dir"], tokenizer_dir=tiny_inputs["tokenizer_dir"],
                              model=kw.pop("model", TINY), **kw)


def test_valid_config_passes_and_round_trips(tiny_inputs, tmp_path):
    c = cfg(tiny_inputs, tmp_path, nproc=2, zero_stage=1)
    manifest = launcher.validate(c, cpus=2)  # 2 processes on 2 cores is allowed
    assert manifest["seq_len"] == 32
    path = c.write(tmp_path / "run.json")
    assert launcher.RunConfig.read(path) == c
    assert c.params()["model.config.n_embd"] == "128" and "mlflow_run_id" not in c.params()


@pytest.mark.parametrize("kw, match", [
    ({"nproc": 3}, "nproc=3 is more than the 2 CPUs"),
    ({"zero_stage": 5}, "zero_stage=5 is not a DeepSpeed ZeRO stage"),
    ({"max_steps": 0}, "max_steps=0"),
    ({"model": {"name": "ft", "local_path": "/nonexistent/model"}}, "local_path '/nonexistent/model'"),
    ({"model": {**TINY, "config": {**TINY["config"], "n_positions": 16}}}, "seq_len=32 exceeds .* 16"),
    ({"method": "qlora"}, "method='qlora' is not a training method"),
    ({"method": "lora"}, "method='lora' trains adapters on a pretrained base: set base_model's local_path"),
    ({"precision": "fp8"}, "precision='fp8' is not one of"),
    ({"precision": "fp16"}, "precision='fp16' needs a GPU"),
    ({"nnodes": 2}, "rdzv_endpoint='': nnodes=2 needs the host:port"),
    ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "127.0.0.1:29400"}, r"node_rank=2 must be in \[0, nnodes=2\)"),
])
def test_bad_settings_are_named_before_any_compute(tiny_inputs, tmp_path, kw, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        launcher.validate(cfg(tiny_inputs, tmp_path, **kw), cpus=2)


def test_more_processes_than_this_machine_has(tiny_inputs, tmp_path):
    with pytest.raises(ValueError, match=r"nproc=\d+ is more than"):
        launcher.validate(cfg(tiny_inputs, tmp_path, nproc=launcher.available_cpus() + 1))


def test_corrupt_shard_is_named(tiny_inputs, tmp_path):
    shard_dir = tmp_path / "shards"
    shutil.copytree(tiny_inputs["shard_dir"], shard_dir)
    victim = shard_dir / "train-00000.bin"
    data = bytearray(victim.read_bytes())
    data[3] ^= 0x01
    victim.write_bytes(bytes(data))
    c = cfg(tiny_inputs, tmp_path)
    c.shard_dir = str(shard_dir)
    with pytest.raises(ValueError, match="train-00000.bin is corrupt"):
        launcher.validate(c, cpus=2)


def test_a_tokenizer_larger_than_the_base_models_vocabulary_is_refused(tiny_inputs, tiny_base, tmp_path):
    # tiny_inputs' tokenizer has 512 tokens; tiny_base's GPT-2 embeds only its own ~320
    c = cfg(tiny_inputs, tmp_path, model={"name": "ft", "local_path": tiny_base["model_dir"]})
    with pytest.raises(ValueError, match=r"tokenizer .*tokenizer.json has 512 tokens but base model .*config.json "
                                         r"has vocab_size=\d+"):
        launcher.validate(c, cpus=2)


def test_multi_node_command(tmp_path):
    cmd = launcher.torchrun_command(tmp_path / "run.json", 1, nnodes=2, node_rank=1,
                                    rdzv_endpoint="10.0.0.1:29400", run_id="r1")
    assert "--standalone" not in cmd
    joined = " ".join(cmd)
    assert ("--nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 29400 --rdzv_id r1 "
            "--nproc_per_node 1") in joined


def test_command_and_environment(tmp_path):
    cmd = launcher.torchrun_command(tmp_path / "run.json", 2)
    assert cmd[-6:] == ["--nproc_per_node", "2", "-m", "llm_assets.training.worker", "--config",
                        str(tmp_path / "run.json")] and "--standalone" in cmd
    assert Path(cmd[0]).parent == Path(sys.executable).parent or cmd[:3] == [sys.executable, "-m",
                                                                                "torch.distributed.run"]
    env = launcher.training_env(torch_extensions_dir=tmp_path / "ext", tmp_dir=tmp_path / "tmp",
                                cache_dir=tmp_path / "cache", tracking_uri="sqlite:////x.db", base={})
    assert env["DS_ACCELERATOR"] == "cpu" and env["OMP_NUM_THREADS"] == "1"
    assert env["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "ext") and env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////x.db"


def test_a_failing_process_raises_with_its_log_tail(tmp_path):
    lines = []
    with pytest.raises(launcher.TrainingFailed, match="(?s)code 3.*boom"):
        launcher.run([sys.executable, "-c", "print('hello'); import sys; print('boom'); sys.exit(3)"],
                     env={}, on_line=lines.append, cwd=tmp_path)
    assert lines == ["hello", "boom"]
