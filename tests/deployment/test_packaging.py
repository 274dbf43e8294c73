"""The `serving_image` build context on a real tiny model: its entrypoint, run directly (no Docker engine here),
serves the packaged weights over the OpenAI API on 127.0.0.1, and its Dockerfile holds the facts an image needs."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest

from llm_assets.artifacts import ExportedModel, QuantizedModel
from llm_assets.deployment import packaging, processes
from llm_assets.deployment.assets import ServingImageConfig, serving_image
from resources.serving import ServingResource
from resources.settings import SettingsResource
from tests.tiny_model import build_tiny_model

MODEL = "tiny-gpt"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("pkg-model") / "v2", train_steps=60)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_dir):
    """The serving_image asset, invoked directly, writing into a fresh home."""
    home = tmp_path_factory.mktemp("pkg-home")
    exported = ExportedModel(path=str(model_dir), registered_name=MODEL, version="2", mlflow_run_id="run-abc",
                             data_commit="commit-xyz")
    quantized = QuantizedModel(path="", source=exported, size_ratio=0.4, perplexity_delta=0.1)
    resources = {"settings": SettingsResource(home=str(home)), "serving": ServingResource(run_dir=str(home / "run"))}
    out = serving_image(dg.build_asset_context(resources=resources), config=ServingImageConfig(),
                        exported_model=exported, quantized_model=quantized)
    return home, out


def test_asset_writes_the_context_under_the_home_per_version(built, model_dir):
    home, out = built
    image, meta = out.value, out.metadata
    assert image.path == str(home / "images" / MODEL / "v2")
    assert image.tag == "llmops/tiny-gpt:v2"
    assert meta["digest"].value == image.digest and meta["context_path"].value == image.path
    ctx = Path(image.path)
    for name in ("Dockerfile", "entrypoint.sh", "requirements.txt", "requirements-vllm.txt", "SHA256SUMS",
                 "manifest.json", "healthcheck.py", "model/config.json", "model/model.safetensors"):
        assert (ctx / name).is_file(), name
    assert os.access(ctx / "entrypoint.sh", os.X_OK)
    assert set(image.files) == {p.relative_to(ctx).as_posix() for p in ctx.rglob("*") if p.is_file()}
    assert not Path(image.path + ".tmp").exists()
    assert (ctx / "model" / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_sha256sums_match_the_copied_weights(built):
    ctx = Path(built[1].value.path)
    lines = (ctx / "SHA256SUMS").read_text().splitlines()
    assert {line.split("  ")[1] for line in lines} == {p for p in built[1].value.files if p.startswith("model/")}
    for line in lines:
        digest, rel = line.split("  ")
        assert hashlib.sha256((ctx / rel).read_bytes()).hexdigest() == digest
    # `sha256sum -c` is what the Dockerfile runs; it must accept the file as written.
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=ctx, check=True)


def test_requirements_pin_the_installed_serving_stack(built):
    import torch
    import transformers

    lines = Path(built[1].value.path, "requirements.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if "==" in line)
    assert pins["transformers"] == transformers.__version__
    assert pins["torch"] == torch.__version__
    assert {"fastapi", "uvicorn", "tokenizers", "safetensors", "openai"} <= set(pins)
    assert any(line.startswith("--extra-index-url") for line in lines)  # torch's CPU build


def test_dockerfile_facts(built):
    ctx = Path(built[1].value.path)
    assert packaging.check_dockerfile(ctx) == []
    instructions = packaging.dockerfile_instructions((ctx / "Dockerfile").read_text())
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(i == "HEALTHCHECK" and "healthcheck.py" in a for i, a in instructions)
    assert "/health" in (ctx / "healthcheck.py").read_text()
    assert 'io.llmops.model-version="2"' in (ctx / "Dockerfile").read_text()
    assert 'io.llmops.data-commit="commit-xyz"' in (ctx / "Dockerfile").read_text()
    assert "{{" not in (ctx / "Dockerfile").read_text() + (ctx / "entrypoint.sh").read_text()


def test_check_dockerfile_reports_root_user_missing_copy_source_and_healthcheck(built, tmp_path):
    text = Path(built[1].value.path, "Dockerfile").read_text()
    bad = text.replace("USER 10001:10001", "USER root").replace("COPY model/ ./model/", "COPY weights/ ./model/")
    bad = "\n".join(line for line in bad.splitlines() if not line.startswith("HEALTHCHECK"))
    (tmp_path / "Dockerfile").write_text(bad)
    problems = " | ".join(packaging.check_dockerfile(tmp_path))
    assert "non-root USER" in problems
    assert "'weights/' does not exist" in problems
    assert "HEALTHCHECK" in problems


def test_same_model_gives_the_same_digest_and_a_changed_weight_another(model_dir, tmp_path):
    a = packaging.build_context(model_dir, tmp_path / "a", MODEL, "2")
    b = packaging.build_context(model_dir, tmp_path / "b", MODEL, "2")
    assert a.digest == b.digest and a.files == b.files
    changed = tmp_path / "changed"
    subprocess.run(["cp", "-r", str(model_dir), str(changed)], check=True)
    with open(changed / "model.safetensors", "ab") as f:
        f.write(b"\0")
    c = packaging.build_context(changed, tmp_path / "c", MODEL, "2")
    assert c.digest != a.digest
    assert c.files["model/model.safetensors"] != a.files["model/model.safetensors"]


def test_bad_inputs_are_rejected_and_leave_the_previous_context(model_dir, tmp_path):
    good = packaging.build_context(model_dir, tmp_path / "ctx", MODEL, "1")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        packaging.build_context(tmp_path, tmp_path / "ctx", MODEL, "1")
    with pytest.raises(ValueError, match="not a valid image name"):
        packaging.build_context(model_dir, tmp_path / "ctx", "Tiny GPT", "1")
    with pytest.raises(ValueError, match="backend"):
        packaging.build_context(model_dir, tmp_path / "ctx", MODEL, "1", backend="tgi")
    with pytest.raises(KeyError, match="MISSING"):
        packaging.render("{{MODEL_NAME}} {{MISSING}}", {"MODEL_NAME": "x"})
    assert packaging.context_digest(
        {p.relative_to(good.path).as_posix(): packaging.sha256_file(p)
         for p in Path(good.path).rglob("*") if p.is_file()}) == good.digest


def _venv_env(**extra):
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    return {**env, "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}", **extra}


def test_entrypoint_rejects_a_missing_model_dir_and_an_unknown_backend(built, tmp_path):
    entry = str(Path(built[1].value.path) / "entrypoint.sh")
    r = subprocess.run([entry], env=_venv_env(LLMOPS_MODEL_DIR=str(tmp_path)), capture_output=True, text=True)
    assert r.returncode == 2 and "no config.json" in r.stderr
    r = subprocess.run([entry], env=_venv_env(LLMOPS_SERVING_BACKEND="tgi"), capture_output=True, text=True)
    assert r.returncode == 2 and "'tgi'" in r.stderr


def test_entrypoint_run_directly_serves_the_packaged_model(built, tmp_path):
    """The image's ENTRYPOINT, run as the container would (but bound to 127.0.0.1 on a free port), answers
    /health, the healthcheck script passes, and a chat completion comes from the weights in the context's model/."""
    ctx = Path(built[1].value.path)
    port = processes.free_port()
    env = _venv_env(LLMOPS_HOST="127.0.0.1", LLMOPS_PORT=str(port), TMPDIR=str(tmp_path))
    server = processes.start("backend", [str(ctx / "entrypoint.sh")], tmp_path, env=env, cwd=tmp_path)
    try:
        processes.wait_healthy(f"http://127.0.0.1:{port}/health", 180, server)
        assert subprocess.run([sys.executable, str(ctx / "healthcheck.py")], env=env).returncode == 0
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                          json={"model": str(ctx / "model"), "max_tokens": 8,
                                "messages": [{"role": "user", "content": "hello there"}]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] > 0
        # The entrypoint exec'ed the server on the context's copy of the weights, not the source directory.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert str(ctx / "model").encode() in cmdline and b"--continuous-batching" in cmdline
    finally:
        processes.stop(tmp_path, "backend")
    # Nothing listens any more: the health check now fails.
    assert subprocess.run([sys.executable, str(ctx / "healthcheck.py")], env=env,
                          capture_output=True).returncode == 1
