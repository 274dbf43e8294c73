"""Two "nodes" on loopback: 2 torchrun agents × 1 process against 1 agent × 2 processes, same data and seed.

A run on 1 node × 2 processes saves a checkpoint at step 5; the 2 nodes × 1 process layout resumes it
and its steps 6-10 have the losses the 1-node run had, within a float-summation tolerance.
Killing one node mid-run fails the other cleanly, leaves the last sealed checkpoint intact, and a
relaunch of both nodes continues from it.
"""

import re
import shutil
import subprocess
import threading
import time

from llm_assets.deployment.processes import free_port
from llm_assets.training import checkpoints, launcher
from tests.training.test_launcher import TINY

# Dropout draws from an RNG that checkpoints do not carry, so without it a resumed step repeats exactly.
NO_DROPOUT = {**TINY, "config": {**TINY["config"], "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}


def losses(lines, max_steps=10):
    step = re.compile(rf"step (\d+)/{max_steps} loss ([\d.]+)")
    return {int(m.group(1)): float(m.group(2)) for line in lines if (m := step.search(line))}


def start_nodes(base: launcher.RunConfig, ckpt_dir, env):
    """`base` as 2 nodes × 1 process on loopback: both torchrun launchers, each log streamed into a list."""
    port = free_port()
    nodes = [launcher.RunConfig(**{**base.__dict__, "checkpoint_dir": str(ckpt_dir), "nproc": 1, "nnodes": 2,
                                   "node_rank": rank, "rdzv_endpoint": f"127.0.0.1:{port}"}) for rank in (0, 1)]
    path = nodes[0].write(ckpt_dir / "run.json")
    logs: list[list[str]] = [[], []]
    procs = [launcher.start(launcher.command_for(cfg, path), env) for cfg in nodes]
    readers = [threading.Thread(target=launcher.stream, args=(p, logs[i].append), daemon=True)
               for i, p in enumerate(procs)]
    for r in readers:
        r.start()
    return procs, logs, readers


def stop_nodes(procs, readers) -> None:
    """Kill whatever still runs (a failed assertion mid-run must not leave training behind)."""
    for p in procs:
        if p.poll() is None:
            launcher.kill_group(p)
            p.wait()
    for r in readers:
        r.join(timeout=10)


def test_two_nodes_resume_a_one_node_checkpoint_with_the_same_losses(tiny_inputs, tmp_path, cache_dir):
    env = launcher.training_env(torch_extensions_dir=cache_dir / "torch_extensions", tmp_dir=tmp_path / "tmp",
                                cache_dir=cache_dir / "xdg")
    one_node = launcher.RunConfig(
        run_name="layout", checkpoint_dir=str(tmp_path / "one"), shard_dir=tiny_inputs["shard_dir"],
        tokenizer_dir=tiny_inputs["tokenizer_dir"], model=TINY, nproc=2, micro_batch_size=4, max_steps=10,
        save_every=5, keep_checkpoints=2, log_every=1, lr=3e-3, warmup_steps=2)
    launcher.validate(one_node)
    first: list[str] = []
    launcher.run(launcher.command_for(one_node, one_node.write(tmp_path / "one" / "run.json")), env, first.append)
    reference = losses(first)
    assert sorted(reference) == list(range(1, 11))

    # The 2-node run starts from the 1-node run's step-5 checkpoint.
    two = tmp_path / "two"
    shutil.copytree(tmp_path / "one" / checkpoints.tag_name(5), two / checkpoints.tag_name(5))
    checkpoints.mark_latest(two, checkpoints.tag_name(5), keep=2)
    procs, logs, readers = start_nodes(one_node, two, env)
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        stop_nodes(procs, readers)
    assert codes == [0, 0], "\n".join(logs[0][-30:] + logs[1][-30:])
    assert any("world 2" in line for line in logs[0])
    assert any("resumed from" in line and "at step 5" in line for line in logs[0])
    resumed = losses(logs[0])
    assert sorted(resumed) == [6, 7, 8, 9, 10]
    # Same batches and weights; only the all-reduce order differs (shared-memory within a node, TCP across
    # nodes), so float sums drift apart a little each step.
    drift = {step: abs(loss - reference[step]) / reference[step] for step, loss in resumed.items()}
    assert drift[6] < 1e-3 and max(drift.values()) < 1e-2, (resumed, reference)
    assert (two / "hf_final" / "model.safetensors").exists()


def test_killing_one_node_fails_the_run_cleanly_and_it_resumes_from_the_last_checkpoint(tiny_inputs, tmp_path,
                                                                                         cache_dir):
    env = launcher.training_env(torch_extensions_dir=cache_dir / "torch_extensions", tmp_dir=tmp_path / "tmp",
                                cache_dir=cache_dir / "xdg")
    ckpt = tmp_path / "ckpt"
    cfg = launcher.RunConfig(
        run_name="node-kill", checkpoint_dir=str(ckpt), shard_dir=tiny_inputs["shard_dir"],
        tokenizer_dir=tiny_inputs["tokenizer_dir"], model=NO_DROPOUT, micro_batch_size=4, max_steps=30,
        save_every=10, keep_checkpoints=2, log_every=1, lr=3e-3, warmup_steps=2)
    launcher.validate(cfg)

    procs, logs, readers = start_nodes(cfg, ckpt, env)
    try:
        # Node 1 dies (torchrun and its worker, SIGKILL) three steps after the step-10 checkpoint was sealed.
        deadline = time.monotonic() + 300
        while 13 not in losses(logs[0], 30) and procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 13 in losses(logs[0], 30), "\n".join(logs[0][-40:] + logs[1][-40:])
        assert (ckpt / checkpoints.tag_name(10) / checkpoints.MANIFEST).exists()
        launcher.kill_group(procs[1])
        # The surviving node must notice its peer is gone and fail, not wait on it forever.
        try:
            code = procs[0].wait(timeout=180)
        except subprocess.TimeoutExpired:
            raise AssertionError("node 0 still runs 180 s after node 1 died:\n" + "\n".join(logs[0][-40:])) from None
    finally:
        stop_nodes(procs, readers)
    assert code != 0, "\n".join(logs[0][-40:])
    assert any(re.search(r"(closed|reset) by peer", line) for line in logs[0])  # gloo names the lost peer
    assert procs[1].returncode == -9
    interrupted = losses(logs[0], 30)
    assert max(interrupted) < 20 and not (ckpt / "hf_final").exists()

    tag, skipped = checkpoints.newest_valid(ckpt)
    assert tag == checkpoints.tag_name(10) and skipped == []
    assert checkpoints.problem(ckpt / tag) is None  # every file matches its manifest
    assert (ckpt / checkpoints.LATEST).read_text() == tag

    procs, logs, readers = start_nodes(cfg, ckpt, env)
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        stop_nodes(procs, readers)
    assert codes == [0, 0], "\n".join(logs[0][-30:] + logs[1][-30:])
    assert any("resumed from" in line and "at step 10" in line for line in logs[0])
    resumed = losses(logs[0], 30)
    assert sorted(resumed) == list(range(11, 31))  # continues after the checkpoint, not from step 1
    # Steps the killed run got through before the kill come out the same from the restored state.
    overlap = sorted(set(resumed) & set(interrupted))
    assert overlap[:3] == [11, 12, 13]
    assert all(abs(resumed[s] - interrupted[s]) <= 1e-4 * interrupted[s] for s in overlap), (resumed, interrupted)
    assert resumed[30] < interrupted[1]
    assert (ckpt / "hf_final" / "model.safetensors").exists()
