"""The training run's config, its checks, and launching `torchrun` as a process group whose log we stream.

Plain code: the `trained_checkpoint` asset, the tests and a person at a shell all launch runs this way.

    cfg = RunConfig(run_name="demo", checkpoint_dir=..., shard_dir=..., tokenizer_dir=..., model={...})
    validate(cfg)                                   # clear errors before any compute
    path = cfg.write(Path(cfg.checkpoint_dir) / "run.json")
    run(torchrun_command(path, cfg.nproc), training_env(...), on_line=print)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ZERO_STAGES = (0, 1, 2, 3)
METHODS = ("full", "lora")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    """Everything a worker needs; written as run.json and logged as MLflow params."""

    run_name: str
    checkpoint_dir: str
    shard_dir: str
    tokenizer_dir: str
    extra_shard_dirs: list[str] = field(default_factory=list)
    """More shard sets (same tokenizer and seq_len) whose train sequences join shard_dir's, e.g. feedback examples."""
    model: dict = field(default_factory=dict)
    """Catalog entry: {name, model_type, config} to build from scratch, or {name, local_path} to fine-tune."""
    nproc: int = 2
    """Processes per node."""
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    """host:port of the rendezvous (node 0) when nnodes > 1."""
    method: str = "full"
    """"full": train every weight; "lora": train LoRA adapters (peft) on a frozen base."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=list)
    """Empty: peft's default modules for the model type (c_attn for GPT-2, q_proj/v_proj for Llama)."""
    precision: str = "fp32"
    """"bf16" where the device has it (CPUs with AVX-512 BF16 / AMX, GPUs); "fp16" on GPUs only."""
    activation_checkpointing: bool = False
    zero_stage: int = 2
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int = 200
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    verify_shards: bool = True
    mlflow_tracking_uri: str = ""
    mlflow_run_id: str = ""
    teacher_dir: str = ""
    """Distillation (optimization/distill.py): a Hugging Face teacher whose logits the model learns; empty: none."""
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    """Weight of the soft-target KL; 1 - alpha weighs the LM loss."""

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown run config keys {unknown}")
        return cls(**data)

    def params(self) -> dict[str, str]:
        """Flat key → string view for MLflow params (nested dicts become dotted keys)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = str(value)[:6000]

        walk("", {k: v for k, v in asdict(self).items() if k != "mlflow_run_id"})
        return out


def available_cpus() -> int:
    """CPUs this process may use (the affinity mask, which containers narrow; else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def model_context_length(model: dict) -> int | None:
    cfg = model.get("config") or {}
    return cfg.get("n_positions") or cfg.get("max_position_embeddings")


def validate(cfg: RunConfig, cpus: int | None = None, verify_shards: bool = True) -> dict:
    """Raise ValueError/FileNotFoundError naming the setting or file that is wrong; returns the manifest.

    Runs in the launching process so a bad setting fails in a second, not after torchrun started.
    """
    from llm_assets.tokens.shards import file_sha256, open_split, read_manifest

    cpus = cpus or available_cpus()
    if cfg.nproc < 1:
        raise ValueError(f"nproc={cfg.nproc}: need at least one process")
    if cfg.nproc > cpus:
        raise ValueError(f"nproc={cfg.nproc} is more than the {cpus} CPUs available here; "
                         f"each gloo process needs its own core (set nproc <= {cpus})")
    if cfg.zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage={cfg.zero_stage} is not a DeepSpeed ZeRO stage; use one of {list(ZERO_STAGES)}")
    _validate_topology(cfg)
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r} is not a training method; use one of {list(METHODS)}")
    if cfg.method == "lora" and not cfg.model.get("local_path"):
        raise ValueError("method='lora' trains adapters on a pretrained base: set base_model's local_path to a "
                         "Hugging Face model directory (or use method='full' to train from scratch)")
    if cfg.method == "lora" and cfg.lora_r < 1:
        raise ValueError(f"lora_r={cfg.lora_r} must be at least 1")
    _validate_precision(cfg.precision)
    for name in ("micro_batch_size", "grad_accum_steps", "max_steps", "save_every", "log_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be at least 1")
    if not cfg.lr > 0:
        raise ValueError(f"lr={cfg.lr} must be positive")
    if cfg.warmup_steps < 1:
        raise ValueError(f"warmup_steps={cfg.warmup_steps} must be at least 1")
    local_path = cfg.model.get("local_path")
    if local_path:
        p = Path(local_path)
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"base model local_path {local_path!r} is not a Hugging Face model directory "
                                    "(no config.json)")
    elif not cfg.model.get("model_type"):
        raise ValueError(f"model {cfg.model.get('name', cfg.model)!r} has neither model_type+config nor local_path")
    tok_file = Path(cfg.tokenizer_dir) / "tokenizer.json"
    if not tok_file.exists():
        raise FileNotFoundError(f"tokenizer_dir {cfg.tokenizer_dir!r} has no tokenizer.json")
    if local_path:
        _validate_vocabulary(tok_file, Path(local_path) / "config.json")
    if cfg.teacher_dir:
        _validate_teacher(cfg, tok_file)
    manifest = read_manifest(cfg.shard_dir)
    tok_sha = file_sha256(tok_file)
    if manifest["tokenizer_sha256"] != tok_sha:
        raise ValueError(f"shards in {cfg.shard_dir} were made with tokenizer {manifest['tokenizer_sha256'][:12]}, "
                         f"but tokenizer_dir {cfg.tokenizer_dir} is {tok_sha[:12]}")
    ctx = model_context_length(cfg.model)
    if ctx is not None and manifest["seq_len"] > ctx:
        raise ValueError(f"shard seq_len={manifest['seq_len']} exceeds model {cfg.model.get('name')!r} "
                         f"context length {ctx}")
    train = open_split(cfg.shard_dir, "train", verify=verify_shards)  # ValueError names a corrupt shard
    if sum(len(a) for a in train) == 0:
        raise ValueError(f"shard directory {cfg.shard_dir} has no train sequences")
    for extra in cfg.extra_shard_dirs:
        other = read_manifest(extra)
        if other["tokenizer_sha256"] != tok_sha or other["seq_len"] != manifest["seq_len"]:
            raise ValueError(f"extra shard directory {extra} (tokenizer {other['tokenizer_sha256'][:12]}, seq_len "
                             f"{other['seq_len']}) does not match {cfg.shard_dir} (tokenizer {tok_sha[:12]}, "
                             f"seq_len {manifest['seq_len']})")
        open_split(extra, "train", verify=verify_shards)
    return manifest


def _validate_topology(cfg: RunConfig) -> None:
    if cfg.nnodes < 1:
        raise ValueError(f"nnodes={cfg.nnodes} must be at least 1")
    if not 0 <= cfg.node_rank < cfg.nnodes:
        raise ValueError(f"node_rank={cfg.node_rank} must be in [0, nnodes={cfg.nnodes})")
    if cfg.nnodes > 1:
        host, _, port = cfg.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"rdzv_endpoint={cfg.rdzv_endpoint!r}: nnodes={cfg.nnodes} needs the host:port "
                             "of node 0's rendezvous (e.g. 10.0.0.1:29400)")


def _validate_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return
    import torch

    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("precision='fp16' needs a GPU (DeepSpeed's loss scaler); use 'bf16' or 'fp32' on CPU")
    if precision == "bf16" and not torch.cuda.is_available() and not torch.backends.mkldnn.is_available():
        raise ValueError("precision='bf16': this CPU build of torch has no oneDNN bf16 kernels; use 'fp32'")


def _validate_vocabulary(tok_file: Path, model_config: Path) -> None:
    """The tokenizer's ids must index the base model's embedding table."""
    from tokenizers import Tokenizer

    tok_vocab = Tokenizer.from_file(str(tok_file)).get_vocab_size(with_added_tokens=True)
    model_vocab = json.loads(model_config.read_text()).get("vocab_size")
    if model_vocab is not None and tok_vocab > model_vocab:
        raise ValueError(f"tokenizer {tok_file} has {tok_vocab} tokens but base model {model_config} has "
                         f"vocab_size={model_vocab}: its ids would index past the embedding table; tokenize "
                         "with the base model's own tokenizer (tokenizer config local_path)")


def _validate_teacher(cfg: RunConfig, tok_file: Path) -> None:
    """A distillation teacher must exist and share the tokenizer's vocabulary (its logits index the student's)."""
    from tokenizers import Tokenizer

    config = Path(cfg.teacher_dir) / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"teacher_dir {cfg.teacher_dir!r} is not a Hugging Face model directory (no config.json)")
    if cfg.method != "full":
        raise ValueError(f"method={cfg.method!r}: distillation trains the whole student; use method='full'")
    if not cfg.distill_temperature > 0:
        raise ValueError(f"distill_temperature={cfg.distill_temperature} must be positive")
    if not 0.0 <= cfg.distill_alpha <= 1.0:
        raise ValueError(f"distill_alpha={cfg.distill_alpha} must be in [0, 1]")
    tok_vocab = Tokenizer.from_file(str(tok_file)).get_vocab_size(with_added_tokens=True)
    teacher_vocab = json.loads(config.read_text()).get("vocab_size")
    if teacher_vocab != tok_vocab:
        raise ValueError(f"teacher {cfg.teacher_dir} has vocab_size={teacher_vocab} but tokenizer {tok_file} has "
                         f"{tok_vocab} tokens: teacher and student logits must index the same vocabulary")


def torchrun_command(config_path: str | Path, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str = "", run_id: str = "llmops") -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m llm_assets.training.worker --config run.json`, or with
    `--nnodes M --node_rank R --master_addr host --master_port port` across nodes.

    Static rendezvous, so node R's processes are always global ranks R·N … R·N+N-1 and every rank
    reads the same batches whichever node starts first (c10d's dynamic rendezvous ignores node_rank).
    """
    torchrun = Path(sys.executable).with_name("torchrun")
    # The torchrun beside this interpreter, so the workers run in the same venv whatever PATH says.
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and not rdzv_endpoint:
        topology = ["--standalone"]
    else:
        host, _, port = rdzv_endpoint.rpartition(":")
        topology = ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master_addr", host,
                    "--master_port", port, "--rdzv_id", run_id]
    return [*launcher, *topology, "--nproc_per_node", str(nproc),
            "-m", "llm_assets.training.worker", "--config", str(config_path)]


def command_for(cfg: RunConfig, config_path: str | Path) -> list[str]:
    """The torchrun command line that launches `cfg` on this node."""
    return torchrun_command(config_path, cfg.nproc, cfg.nnodes, cfg.node_rank, cfg.rdzv_endpoint, cfg.run_name)


def training_env(*, torch_extensions_dir: str | Path, tmp_dir: str | Path, cache_dir: str | Path,
                 tracking_uri: str = "", base: dict[str, str] | None = None) -> dict[str, str]:
    """The workers' environment: DeepSpeed on CPU unless there is a GPU, scratch inside the llmops home/cache."""
    env = dict(os.environ if base is None else base)
    for d in (torch_extensions_dir, tmp_dir, cache_dir):
        Path(d).mkdir(parents=True, exist_ok=True)
    import torch

    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    env.update({
        "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir),  # deepspeed_shm_comm compiles once (~25 s), then cached
        "TMPDIR": str(tmp_dir),
        "XDG_CACHE_HOME": str(cache_dir),
        "HF_HOME": str(Path(cache_dir) / "huggingface"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # one core per gloo process; more threads only fight over the cores
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    })
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


class TrainingFailed(RuntimeError):
    def __init__(self, returncode: int, tail: str):
        super().__init__(f"training exited with code {returncode}; last lines of its log:\n{tail}")
        self.returncode, self.tail = returncode, tail


def start(cmd: list[str], env: dict[str, str], cwd: str | Path = REPO_ROOT) -> subprocess.Popen:
    """Start the command in its own process group (so one signal reaches torchrun and every worker)."""
    return subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True, errors="replace")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal torchrun's process group and every worker below it.

    torchrun starts each worker in a session of its own, so signalling torchrun's group alone would
    leave the workers training as orphans; their process groups are signalled one by one.
    """
    import psutil  # a DeepSpeed dependency

    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    for pgid in dict.fromkeys([proc.pid, *(p.pid for p in below)]):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pgid, sig)
            except ProcessLookupError:
                pass


def stream(proc: subprocess.Popen, on_line: Callable[[str], None], tail_lines: int = 80) -> tuple[int, str]:
    """Pass every output line to `on_line` until the process ends; returns (exit code, log tail)."""
    tail: deque[str] = deque(maxlen=tail_lines)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        on_line(line)
    return proc.wait(), "\n".join(tail)


def run(cmd: list[str], env: dict[str, str], on_line: Callable[[str], None], cwd: str | Path = REPO_ROOT) -> str:
    """Run to completion, streaming the log; raise TrainingFailed with the tail on a non-zero exit.

    If the caller is interrupted (a cancelled Dagster run), the whole process group is stopped.
    """
    proc = start(cmd, env, cwd)
    try:
        rc, tail = stream(proc, on_line)
    finally:
        if proc.poll() is None:
            kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(proc, signal.SIGKILL)
                proc.wait()
    if rc != 0:
        raise TrainingFailed(rc, tail)
    return tail


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll until `path` exists; False if the process ended or the timeout passed first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.05)
    return False
