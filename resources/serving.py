"""Model servers and the gateway in front of them: started, health-checked and stopped as processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg
import httpx

from llm_assets.deployment import processes

BACKEND, GATEWAY = "backend", "gateway"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Deployment:
    """A running backend + gateway pair, as recorded in `<run_dir>/deployment.json`."""

    url: str
    backend_url: str
    backend_model: str
    model_name: str
    model_version: str
    model_dir: str
    backend_pid: int
    gateway_pid: int


class ServingResource(dg.ConfigurableResource):
    """OpenAI-compatible serving: `transformers serve` on CPU or `vllm serve` on GPU, behind our gateway.

    Both run as detached processes (pid files and logs in `run_dir`), so a deployment outlives the
    Dagster run that made it; the next deployment, or `make down`, stops them. The backend always binds
    to 127.0.0.1 on a free port; the gateway binds to `host:gateway_port` (0: a free port).
    """

    run_dir: str
    backend: str = "transformers"
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    api_key: str = ""
    startup_timeout: float = 300.0
    cb_num_blocks: int = 64
    """transformers backend: KV-cache pages (256 tokens each; 64 hold 16k tokens). 0: sized from free
    memory, which on CPU took ~12 GB of RAM and a 7-35 s first request here, hence a small fixed cache."""
    cb_max_batch_tokens: int = 512
    """transformers backend: tokens per batching step (longer prompts are prefilled in chunks); 0: auto."""

    # ---- commands

    def backend_command(self, model_dir: str, port: int) -> list[str]:
        """The model server's command line for `backend` ("transformers" or "vllm")."""
        model_dir = str(Path(model_dir).resolve())
        if self.backend == "transformers":
            # The model path is also the id the server accepts in a request's `model`.
            cmd = [_executable("transformers"), "serve", model_dir, "--continuous-batching",
                   "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
            if self.cb_num_blocks:
                cmd += ["--cb-num-blocks", str(self.cb_num_blocks)]
            if self.cb_max_batch_tokens:
                cmd += ["--cb-max-batch-tokens", str(self.cb_max_batch_tokens)]
            return cmd
        if self.backend == "vllm":  # GPU machines only; not exercised by the CPU tests
            return [_executable("vllm"), "serve", model_dir, "--host", "127.0.0.1", "--port", str(port)]
        raise ValueError(f"ServingResource.backend must be 'transformers' or 'vllm', got {self.backend!r}")

    def gateway_command(self, backend_url: str, model_name: str, backend_model: str, model_version: str,
                        port: int, model_dir: str | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "llm_assets.deployment.gateway", "--backend-url", backend_url,
               "--model-name", model_name, "--backend-model", backend_model,
               "--model-version", model_version, "--host", self.host, "--port", str(port)]
        return cmd + (["--model-dir", str(Path(model_dir).resolve())] if model_dir else [])

    # ---- lifecycle

    def deploy(self, model_dir: str, model_name: str, model_version: str = "",
               log: dg.DagsterLogManager | None = None) -> Deployment:
        """Stop the current deployment, start backend and gateway for `model_dir`, wait until both are healthy."""
        if not (Path(model_dir) / "config.json").exists():
            raise FileNotFoundError(f"model_dir {model_dir!r} has no config.json: not a Hugging Face model directory")
        run = Path(self.run_dir)
        stopped = self.stop()
        if log and stopped:
            log.info(f"stopped previous deployment: {', '.join(stopped)}")
        if self.gateway_port and processes.port_in_use(self.host, self.gateway_port):
            raise RuntimeError(f"gateway_port {self.gateway_port} on {self.host} is taken by a process outside "
                               f"{self.run_dir}; stop it (`make down` in its home) or set LLMOPS_GATEWAY_PORT")
        backend_model = str(Path(model_dir).resolve())
        backend_port = processes.free_port("127.0.0.1")
        backend_url = f"http://127.0.0.1:{backend_port}"
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(run / "tmp"),
               "PYTHONPATH": _pythonpath()}
        (run / "tmp").mkdir(parents=True, exist_ok=True)
        try:
            backend = processes.start(BACKEND, self.backend_command(model_dir, backend_port), run, env=env,
                                      cwd=run)
            if log:
                log.info(f"started {self.backend} backend pid {backend.pid}: {' '.join(backend.command)}")
            processes.wait_healthy(f"{backend_url}/health", self.startup_timeout, backend)
            warmup_s = self._warm_up(backend_url, backend_model, backend)
            if log:
                log.info(f"backend healthy and warmed up ({warmup_s:.1f}s for its first completion)")
            port = self.gateway_port or processes.free_port(self.host)
            gateway = processes.start(
                GATEWAY, self.gateway_command(backend_url, model_name, backend_model, model_version, port,
                                              model_dir),
                run, env={**env, "LLMOPS_API_KEY": self.api_key}, cwd=PROJECT_ROOT)
            if log:
                log.info(f"started gateway pid {gateway.pid}: {' '.join(gateway.command)}")
            url = f"http://{_connect_host(self.host)}:{port}"
            processes.wait_healthy(f"{url}/health", 60, gateway)
        except BaseException:
            self.stop()
            raise
        deployment = Deployment(url, backend_url, backend_model, model_name, model_version,
                                backend_model, backend.pid, gateway.pid)
        (run / "deployment.json").write_text(json.dumps(asdict(deployment), indent=2))
        return deployment

    @contextlib.contextmanager
    def temporary_backend(self, model_dir: str, name: str = "eval") -> Iterator[tuple[str, str]]:
        """A backend serving `model_dir` on a free 127.0.0.1 port while the block runs, for work before a
        deployment (evaluation, red teaming); yields (base URL, model id to put in requests).

        Its pid file and log live in `<run_dir>/<name>/`, apart from the deployment's, so deploying or
        `make down` never stops it by accident, and it never stops a deployment.
        """
        if not (Path(model_dir) / "config.json").exists():
            raise FileNotFoundError(f"model_dir {model_dir!r} has no config.json: not a Hugging Face model directory")
        run = Path(self.run_dir) / name
        processes.stop_all(run)  # a leftover from a killed run
        (run / "tmp").mkdir(parents=True, exist_ok=True)
        port = processes.free_port("127.0.0.1")
        url, model_id = f"http://127.0.0.1:{port}", str(Path(model_dir).resolve())
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(run / "tmp"),
               "PYTHONPATH": _pythonpath()}
        try:
            backend = processes.start(BACKEND, self.backend_command(model_dir, port), run, env=env, cwd=run)
            processes.wait_healthy(f"{url}/health", self.startup_timeout, backend)
            self._warm_up(url, model_id, backend)
            yield url, model_id
        finally:
            processes.stop_all(run)

    def _warm_up(self, backend_url: str, backend_model: str, backend: processes.ManagedProcess) -> float:
        """One tiny completion straight to the backend, so the first real request does not pay for setup:
        `transformers serve --continuous-batching` builds its batching manager and KV cache on first use."""
        start = time.perf_counter()
        try:
            resp = httpx.post(f"{backend_url}/v1/chat/completions", timeout=self.startup_timeout,
                              json={"model": backend_model, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "hello"}]})
        except httpx.HTTPError as e:
            raise RuntimeError(f"backend warm-up request to {backend_url} failed: {e!r}; log {backend.log}:\n"
                               f"{processes.log_tail(backend.log)}") from e
        if resp.status_code != 200:
            raise RuntimeError(f"backend warm-up request to {backend_url} answered HTTP {resp.status_code}: "
                               f"{resp.text[:500]}; log {backend.log}:\n{processes.log_tail(backend.log)}")
        return time.perf_counter() - start

    def stop(self) -> list[str]:
        """Stop gateway and backend (whatever has a pid file in `run_dir`); returns what was running."""
        stopped = processes.stop_all(self.run_dir)
        (Path(self.run_dir) / "deployment.json").unlink(missing_ok=True)
        return stopped

    def current(self) -> Deployment | None:
        """The recorded deployment, or None when nothing was deployed or it was stopped."""
        path = Path(self.run_dir) / "deployment.json"
        return Deployment(**json.loads(path.read_text())) if path.exists() else None

    def status(self) -> dict:
        return {"deployment": asdict(d) if (d := self.current()) else None,
                "processes": processes.status(self.run_dir)}

    # ---- clients

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def chat(self, url: str, model: str, prompt: str, max_tokens: int = 16, timeout: float = 120.0) -> dict:
        """One non-streaming chat completion through the gateway at `url`; raises on an HTTP error."""
        resp = httpx.post(f"{url}/v1/chat/completions", headers=self.headers(), timeout=timeout,
                          json={"model": model, "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": prompt}]})
        if resp.status_code != 200:
            raise RuntimeError(f"chat completion at {url} failed: HTTP {resp.status_code} {resp.text[:500]}")
        return resp.json()

    def smoke_test(self, deployment: Deployment, prompt: str = "Hello! What can you do?") -> str:
        """A real chat request through the gateway; returns the reply, raises when it is empty."""
        data = self.chat(deployment.url, deployment.model_name, prompt)
        reply = data["choices"][0]["message"].get("content") or ""
        if not reply:
            raise RuntimeError(f"smoke test: {deployment.url} answered an empty completion: {data}")
        return reply


def _executable(name: str) -> str:
    """`name` from this interpreter's bin directory (the venv), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} is not installed next to {sys.executable} nor on PATH")
    return found


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _pythonpath() -> str:
    return os.pathsep.join(p for p in [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")] if p)
