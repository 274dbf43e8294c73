"""Two "nodes" on loopback: 2 torchrun agents × 1 process against 1 agent × 2 processes, same data and seed.

A run on 1 node × 2 processes saves a checkpoint at step 5; the 2 nodes × 1 process layout resumes it
and its steps 6-10 have the losses the 1-node run had, within a float-summation tolerance.
"""

import re
import shutil
import threading

from llm_assets.deployment.processes import free_port
from llm_assets.training import checkpoints, launcher
from tests.training.test_launcher import TINY

STEP = re.compile(r"step (\d+)/10 loss ([\d.]+)")


def losses(lines):
    return {int(m.group(1)): float(m.group(2)) for line in lines if (m := STEP.search(line))}


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
    port = free_port()
    nodes = [launcher.RunConfig(**{**one_node.__dict__, "checkpoint_dir": str(two), "nproc": 1, "nnodes": 2,
                                   "node_rank": rank, "rdzv_endpoint": f"127.0.0.1:{port}"}) for rank in (0, 1)]
    path = nodes[0].write(two / "run.json")
    logs: list[list[str]] = [[], []]
    procs = [launcher.start(launcher.command_for(cfg, path), env) for cfg in nodes]
    readers = [threading.Thread(target=launcher.stream, args=(p, logs[i].append), daemon=True)
               for i, p in enumerate(procs)]
    for r in readers:
        r.start()
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            launcher.kill_group(p)
    for r in readers:
        r.join(timeout=10)
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
