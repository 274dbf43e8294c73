"""OCI build contexts for model versions: one directory per version that `docker build` turns into a server image.

    context = build_context("/abs/models/llmops-gpt/v3", "<home>/images/llmops-gpt/v3", "llmops-gpt", "3")
    # docker build -t llmops/llmops-gpt:v3 <home>/images/llmops-gpt/v3

A context holds the Dockerfile and the server's entrypoint rendered from the templates in `infra/serving/`,
`requirements.txt` pinned to the versions installed here for what the server imports (the dependency
closure of `transformers[serving]`), the model's files under `model/` with their sha256 in `SHA256SUMS`
(checked by the Dockerfile) and `manifest.json`, and `healthcheck.py` for the image's HEALTHCHECK.
The context's digest covers every file's path and content, so the same model and environment give the
same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = PROJECT_ROOT / "infra" / "serving"
SERVING_ROOTS = ("transformers[serving]",)
"""What the server imports; their installed dependency closure is pinned in requirements.txt."""
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


@dataclass(frozen=True)
class ImageContext:
    """A generated build context for one model version, and the image tag it is meant for."""

    path: str
    model: str
    model_version: str
    tag: str
    digest: str
    weights_bytes: int
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> sha256 of every file in the context."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pinned_requirements(roots: tuple[str, ...] = SERVING_ROOTS) -> list[str]:
    """`name==version` for every installed distribution that `roots` (requirement strings with extras) need,
    transitively, under this interpreter's markers; sorted by name."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()  # (distribution, extra) pairs already expanded
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError as e:
            raise RuntimeError(f"serving needs {req} but {req.name!r} is not installed in {sys.prefix}") from e
        pins[name] = dist.version
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for sub in dist.requires or []:
                sub_req = Requirement(sub)
                if sub_req.marker is None or sub_req.marker.evaluate({"extra": extra}):
                    todo.append(sub_req)
    return [f"{n}=={pins[n]}" for n in sorted(pins)]


def requirements_text(pins: list[str]) -> str:
    header = ("# Pinned to the environment that built this context (llm_assets/deployment/packaging.py).\n"
              f"--extra-index-url {TORCH_CPU_INDEX}\n")
    return header + "".join(f"{p}\n" for p in pins)


def vllm_requirements_text() -> str:
    """vLLM's pin when it is installed here (a GPU machine), else an unpinned line saying so."""
    try:
        return f"vllm=={metadata.version('vllm')}\n"
    except metadata.PackageNotFoundError:
        return ("# vLLM was not installed where this context was built (CPU machine): pin it when building on GPU.\n"
                "vllm\n")


def render(template: str, values: dict[str, str]) -> str:
    """Replace `{{NAME}}` placeholders; a placeholder without a value is an error, not an empty string."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"template placeholders without a value: {missing}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def copy_model(model_dir: Path, dst: Path) -> dict[str, str]:
    """Copy the model directory's files into `dst`; returns {relative path under the context: sha256}."""
    hashes = {}
    for src in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(model_dir)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        hashes[f"model/{rel.as_posix()}"] = sha256_file(target)
    return hashes


def context_digest(files: dict[str, str]) -> str:
    """sha256 over the sorted `path sha256` lines of a context's files."""
    return hashlib.sha256("".join(f"{p} {h}\n" for p, h in sorted(files.items())).encode()).hexdigest()


def build_context(model_dir: str | Path, out_dir: str | Path, model: str, model_version: str, *,
                  backend: str = "transformers", cb_num_blocks: int = 64, cb_max_batch_tokens: int = 512,
                  labels: dict[str, str] | None = None, templates: str | Path = TEMPLATES,
                  registry: str = "llmops") -> ImageContext:
    """Write the build context for `model_dir` (a Hugging Face model directory) to `out_dir`, replacing
    an earlier one; `labels` may set MLFLOW_RUN_ID and DATA_COMMIT for the image labels."""
    model_dir, out_dir, templates = Path(model_dir).resolve(), Path(out_dir).resolve(), Path(templates)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"model_dir {str(model_dir)!r} has no config.json: not a Hugging Face model directory")
    if backend not in ("transformers", "vllm"):
        raise ValueError(f"backend must be 'transformers' or 'vllm', got {backend!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", model):
        raise ValueError(f"model name {model!r} is not a valid image name (lowercase letters, digits, '.', '_', '-')")

    # Build next to the target and swap it in, so a failure never leaves a half-written context.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weights = copy_model(model_dir, tmp / "model")
        (tmp / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sorted(weights.items())))
        tag = f"{registry}/{model}:v{model_version}"
        manifest = {"model": model, "model_version": model_version, "image": tag, "backend": backend,
                    "source_model_dir": str(model_dir), "weights": weights, **(labels or {})}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (tmp / "requirements.txt").write_text(requirements_text(pinned_requirements()))
        (tmp / "requirements-vllm.txt").write_text(vllm_requirements_text())
        values = {"MODEL_NAME": model, "MODEL_VERSION": model_version, "IMAGE_TAG": tag, "BACKEND": backend,
                  "PYTHON_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}",
                  "CB_NUM_BLOCKS": str(cb_num_blocks), "CB_MAX_BATCH_TOKENS": str(cb_max_batch_tokens),
                  "MLFLOW_RUN_ID": (labels or {}).get("MLFLOW_RUN_ID", ""),
                  "DATA_COMMIT": (labels or {}).get("DATA_COMMIT", ""),
                  "WEIGHTS_SHA256": context_digest(weights)}
        (tmp / "Dockerfile").write_text(render((templates / "Dockerfile.tmpl").read_text(), values))
        entrypoint = tmp / "entrypoint.sh"
        entrypoint.write_text(render((templates / "entrypoint.sh.tmpl").read_text(), values))
        entrypoint.chmod(0o755)
        shutil.copyfile(templates / "healthcheck.py", tmp / "healthcheck.py")
        problems = check_dockerfile(tmp)
        if problems:
            raise ValueError(f"generated Dockerfile in {tmp} is not valid: {'; '.join(problems)}")
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    weights_bytes = sum((out_dir / p).stat().st_size for p in weights)
    return ImageContext(path=str(out_dir), model=model, model_version=model_version, tag=tag,
                        digest=context_digest(files), weights_bytes=weights_bytes, files=files)


# ---- Dockerfile facts, checked without a Docker engine

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, with comments dropped and `\\` continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instr, _, args = full.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _copy_sources(args: str) -> list[str]:
    """Source paths of a COPY/ADD (flags dropped, exec/JSON form understood); empty for `--from=` copies."""
    parts = args.split()
    flags = [p for p in parts if p.startswith("--")]
    if any(f.startswith("--from=") for f in flags):
        return []
    rest = " ".join(p for p in parts if not p.startswith("--"))
    items = json.loads(rest) if rest.startswith("[") else rest.split()
    return items[:-1]


def check_dockerfile(context_dir: str | Path) -> list[str]:
    """What is wrong with `<context_dir>/Dockerfile` for a serving image (empty when nothing): the last USER
    must be non-root, a HEALTHCHECK must hit /health, every COPY source must exist in the context, and the
    ENTRYPOINT must be a file the image copies."""
    context_dir = Path(context_dir)
    instructions = dockerfile_instructions((context_dir / "Dockerfile").read_text())
    problems = []
    users = [a for i, a in instructions if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the image must end as a non-root USER, found {users or 'none'}")
    checks = [a for i, a in instructions if i == "HEALTHCHECK"]
    health_script = context_dir / "healthcheck.py"
    if not checks or not ("/health" in checks[-1] or ("healthcheck.py" in checks[-1] and health_script.exists()
                                                     and "/health" in health_script.read_text())):
        problems.append("no HEALTHCHECK that requests /health")
    copied = []
    for instr, args in instructions:
        if instr in ("COPY", "ADD"):
            for src in _copy_sources(args):
                copied.append(src.rstrip("/"))
                if not (context_dir / src).exists():
                    problems.append(f"{instr} source {src!r} does not exist in the context")
    entry = [a for i, a in instructions if i == "ENTRYPOINT"]
    if not entry:
        problems.append("no ENTRYPOINT")
    else:
        program = json.loads(entry[-1])[0] if entry[-1].startswith("[") else entry[-1].split()[0]
        if Path(program).name not in {Path(c).name for c in copied}:
            problems.append(f"ENTRYPOINT {program!r} is not a file the Dockerfile copies")
    return problems
