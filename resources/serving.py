"""Model servers and the gateway in front of them: started, health-checked and stopped as processes.

A deployment is a route table (`<run_dir>/routes.json`, see llm_assets/deployment/gateway.py): one public
model name, one or more versions with weights (stable, canary), each with `replicas` model servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx

from llm_assets.deployment import processes
from llm_assets.deployment.gateway import RouteTable, choose_version

BACKEND, GATEWAY, AUTOSCALER = "backend", "gateway", "autoscaler"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Deployment:
    """The running gateway and its route table for one public model name."""

    url: str
    model_name: str
    gateway_pid: int
    routes: dict

    @property
    def versions(self) -> dict[str, dict]:
        """version -> {weight, backend_model, model_dir, replicas}."""
        return self.routes["models"][self.model_name]["versions"]

    @property
    def weights(self) -> dict[str, float]:
        return {v: e["weight"] for v, e in self.versions.items()}

    @property
    def model_version(self) -> str:
        """The stable version: the largest weight (ties: the latest name)."""
        return max(self.versions, key=lambda v: (self.versions[v]["weight"], v))

    @property
    def backend_url(self) -> str:
        return self.versions[self.model_version]["replicas"][0]

    @property
    def backend_model(self) -> str:
        return self.versions[self.model_version]["backend_model"]

    @property
    def model_dir(self) -> str:
        return self.versions[self.model_version]["model_dir"]


class ServingResource(dg.ConfigurableResource):
    """OpenAI-compatible serving: `transformers serve` on CPU or `vllm serve` on GPU, behind our gateway.

    Everything runs as detached processes (pid files and logs in `run_dir`), so a deployment outlives the
    Dagster run that made it; the next full deployment, or `make down`, stops them. Model servers bind to
    127.0.0.1 on free ports (`replicas` per version); the gateway binds to `host:gateway_port` (0: a free
    port) and logs requests and feedback under `<run_dir>/logs/`. Canary versions, weights and replicas
    change through the gateway's admin API, authorized with `admin_key` (LLMOPS_ADMIN_KEY; empty: a key
    generated into `<run_dir>/admin.key`, readable by its owner only).
    """

    run_dir: str
    backend: str = "transformers"
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    api_key: str = ""
    admin_key: str = ""
    replicas: int = 1
    """Model-server replicas per version."""
    vllm_quantization: str = ""
    """vLLM backend: `--quantization` (e.g. `fp8`, quantized on load with no calibration; `awq`/`gptq` for
    checkpoints made so); empty: the model's own precision."""
    backend_threads: int = 1
    """torch/OpenMP threads per CPU model server (OMP_NUM_THREADS); 0: torch's default, one per core. On CPU,
    scale with replicas: on 2 busy cores a tiny model's request took ~8 ms of CPU with 1 thread and ~73 ms
    with the default, spinning threads fighting each other (measured with benchmarks/gateway_overhead.py)."""
    health_interval: float = 2.0
    """Seconds between the gateway's health checks of each replica."""
    startup_timeout: float = 300.0
    cb_num_blocks: int = 64
    """transformers backend: KV-cache pages (256 tokens each; 64 hold 16k tokens). 0: sized from free
    memory, which on CPU took ~12 GB of RAM and a 7-35 s first request here, hence a small fixed cache."""
    cb_max_batch_tokens: int = 512
    """transformers backend: tokens per batching step (longer prompts are prefilled in chunks); 0: auto."""

    # ---- commands

    def backend_command(self, model_dir: str, port: int | str) -> list[str]:
        """The model server's command line for `backend` ("transformers" or "vllm")."""
        model_dir = model_dir if model_dir == "{model_dir}" else str(Path(model_dir).resolve())
        if self.backend == "transformers":
            # The model path is also the id the server accepts in a request's `model`.
            cmd = [_executable("transformers"), "serve", model_dir, "--continuous-batching",
                   "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
            if self.cb_num_blocks:
                cmd += ["--cb-num-blocks", str(self.cb_num_blocks)]
            if self.cb_max_batch_tokens:
                cmd += ["--cb-max-batch-tokens", str(self.cb_max_batch_tokens)]
            return cmd
        if self.backend == "vllm":  # GPU machines only; not run by the CPU tests
            quantization = ["--quantization", self.vllm_quantization] if self.vllm_quantization else []
            return [_executable("vllm"), "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), *quantization]
        raise ValueError(f"ServingResource.backend must be 'transformers' or 'vllm', got {self.backend!r}")

    def gateway_command(self, backend_url: str, model_name: str, backend_model: str, model_version: str,
                        port: int, model_dir: str | None = None) -> list[str]:
        """The gateway in front of one backend (the single-backend shorthand)."""
        cmd = [sys.executable, "-m", "llm_assets.deployment.gateway", "--backend-url", backend_url,
               "--model-name", model_name, "--backend-model", backend_model,
               "--model-version", model_version, "--host", self.host, "--port", str(port)]
        return cmd + (["--model-dir", str(Path(model_dir).resolve())] if model_dir else [])

    def routes_gateway_command(self, port: int) -> list[str]:
        """The deployment's gateway: route table, request and feedback logs under `run_dir`."""
        run = Path(self.run_dir)
        return [sys.executable, "-m", "llm_assets.deployment.gateway", "--routes", str(run / "routes.json"),
                "--request-log", str(run / "logs" / "requests.jsonl"),
                "--feedback-log", str(run / "logs" / "feedback.jsonl"),
                "--health-interval", str(self.health_interval), "--host", self.host, "--port", str(port)]

    def _env(self) -> dict[str, str]:
        threads = {"OMP_NUM_THREADS": str(self.backend_threads)} if self.backend_threads > 0 else {}
        return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": _pythonpath(), **threads}

    def _admin_key(self) -> str:
        if self.admin_key:
            return self.admin_key
        path = Path(self.run_dir) / "admin.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def fleet(self) -> processes.Fleet:
        """The current deployment's replicas and gateway admin API."""
        return processes.Fleet.load(self.run_dir, self._admin_key())

    # ---- lifecycle

    def deploy(self, model_dir: str, model_name: str, model_version: str = "",
               log: dg.DagsterLogManager | None = None) -> Deployment:
        """Stop the current deployment; start `replicas` backends for `model_dir` and the gateway with a
        one-version route table; wait until all are healthy."""
        _check_model_dir(model_dir)
        run = Path(self.run_dir)
        stopped = self.stop()
        if log and stopped:
            log.info(f"stopped previous deployment: {', '.join(stopped)}")
        if self.gateway_port and processes.port_in_use(self.host, self.gateway_port):
            raise RuntimeError(f"gateway_port {self.gateway_port} on {self.host} is taken by a process outside "
                               f"{self.run_dir}; stop it (`make down` in its home) or set LLMOPS_GATEWAY_PORT")
        if self.replicas < 1:
            raise ValueError(f"ServingResource.replicas must be >= 1, got {self.replicas}")
        model_dir = str(Path(model_dir).resolve())
        version = model_version or "0"
        port = self.gateway_port or processes.free_port(self.host)
        url = f"http://{_connect_host(self.host)}:{port}"
        admin_key = self._admin_key()
        fleet = processes.Fleet(str(run), self.backend_command("{model_dir}", "{port}"), url, admin_key,
                                self._env(), self.startup_timeout)
        try:
            fleet.save()
            urls = fleet.start_replicas(model_name, version, model_dir, model_dir, self.replicas, log)
            routes = {"models": {model_name: {"versions": {version: {
                "weight": 1.0, "backend_model": model_dir, "model_dir": model_dir, "replicas": urls}}}},
                "prompts": {}}
            (run / "routes.json").write_text(json.dumps(routes, indent=2))
            (run / "logs").mkdir(exist_ok=True)
            gateway = processes.start(GATEWAY, self.routes_gateway_command(port), run, cwd=PROJECT_ROOT,
                                      env={**self._env(), "LLMOPS_API_KEY": self.api_key, "LLMOPS_ADMIN_KEY": admin_key})
            if log:
                log.info(f"started gateway pid {gateway.pid}: {' '.join(gateway.command)}")
            processes.wait_healthy(f"{url}/health", 60, gateway)
        except BaseException:
            self.stop()
            raise
        (run / "deployment.json").write_text(json.dumps({"url": url, "model_name": model_name,
                                                         "gateway_pid": gateway.pid}, indent=2))
        return self.current()

    def add_version(self, model_dir: str, model_version: str, weight: float,
                    log: dg.DagsterLogManager | None = None) -> Deployment:
        """Serve `model_version` beside the current versions at `weight` (a canary); the others keep their
        proportions in the remaining 1 - weight. A version already served just gets the new weight."""
        _check_model_dir(model_dir)
        if not 0 < weight < 1:
            raise ValueError(f"canary weight must be in (0, 1), got {weight}; 1.0 is a full deploy()")
        current = self._require_current()
        fleet = self.fleet()
        new_urls: list[str] = []
        if model_version not in current.versions:
            model_dir = str(Path(model_dir).resolve())
            new_urls = fleet.start_replicas(current.model_name, model_version, model_dir, model_dir, self.replicas, log)
        routes = json.loads(json.dumps(current.routes))
        versions = routes["models"][current.model_name]["versions"]
        others = {v: e for v, e in versions.items() if v != model_version}
        total = sum(e["weight"] for e in others.values()) or 1.0
        for e in others.values():
            e["weight"] = e["weight"] / total * (1 - weight)
        if new_urls:
            versions[model_version] = {"weight": weight, "backend_model": model_dir, "model_dir": model_dir,
                                       "replicas": new_urls}
        else:
            versions[model_version]["weight"] = weight
        try:
            fleet.put_routes(routes)
        except BaseException:
            for url in new_urls:
                fleet.stop_replica(url)
            raise
        if log:
            log.info(f"{current.model_name}: weights now {self._require_current().weights}")
        return self._require_current()

    def set_weights(self, weights: dict[str, float]) -> Deployment:
        """New weights for the named versions (others keep theirs)."""
        current = self._require_current()
        unknown = set(weights) - set(current.versions)
        if unknown:
            raise KeyError(f"set_weights: versions {sorted(unknown)} are not served (served: {sorted(current.versions)})")
        routes = json.loads(json.dumps(current.routes))
        for v, w in weights.items():
            routes["models"][current.model_name]["versions"][v]["weight"] = w
        self.fleet().put_routes(routes)
        return self._require_current()

    def remove_version(self, model_version: str, log: dg.DagsterLogManager | None = None) -> Deployment:
        """Take `model_version` out of the route table (a rollback, or the old stable after a promotion) and
        scale the others' weights back to a sum of 1, then stop its replicas."""
        current = self._require_current()
        if model_version not in current.versions:
            raise KeyError(f"remove_version: version {model_version!r} is not served ({sorted(current.versions)})")
        if len(current.versions) == 1:
            raise ValueError(f"remove_version: {model_version!r} is the only version served; use stop()")
        routes = json.loads(json.dumps(current.routes))
        versions = routes["models"][current.model_name]["versions"]
        del versions[model_version]
        total = sum(e["weight"] for e in versions.values())
        for e in versions.values():  # the others keep their proportions of all traffic
            e["weight"] = e["weight"] / total
        fleet = self.fleet()
        fleet.put_routes(routes)
        for url in current.versions[model_version]["replicas"]:
            fleet.stop_replica(url)
        if log:
            log.info(f"removed {current.model_name} version {model_version}; weights now {self._require_current().weights}")
        return self._require_current()

    def promote(self, model_version: str, log: dg.DagsterLogManager | None = None) -> Deployment:
        """`model_version` takes all traffic; every other version is removed and stopped."""
        current = self.set_weights({model_version: 1.0})
        for v in [v for v in current.versions if v != model_version]:
            current = self.remove_version(v, log)
        return current

    def set_prompt(self, prompt_name: str, versions: dict[str, dict]) -> Deployment:
        """Apply prompt `prompt_name` (version -> {"template", "weight"}) to the served model's chat requests."""
        current = self._require_current()
        routes = json.loads(json.dumps(current.routes))
        routes.setdefault("prompts", {})[prompt_name] = {"versions": versions}
        routes["models"][current.model_name]["prompt"] = prompt_name
        self.fleet().put_routes(routes)
        return self._require_current()

    def add_replica(self, model_version: str | None = None, log: dg.DagsterLogManager | None = None) -> str:
        """One more replica of `model_version` (default: the stable one) in rotation; returns its URL."""
        current = self._require_current()
        return self.fleet().add_replica(current.model_name, model_version or current.model_version, log)

    def remove_replica(self, model_version: str | None = None, url: str | None = None) -> str:
        """Drain and stop one replica of `model_version` (default: the stable one); returns its URL."""
        current = self._require_current()
        return self.fleet().remove_replica(current.model_name, model_version or current.model_version, url)

    def start_autoscaler(self, min_replicas: int = 1, max_replicas: int = 4, extra_args: list[str] = ()) -> processes.ManagedProcess:
        """The autoscaler (llm_assets/deployment/autoscaler.py) as a detached process for this deployment."""
        self._require_current()
        cmd = [sys.executable, "-m", "llm_assets.deployment.autoscaler", "--run-dir", self.run_dir,
               "--min", str(min_replicas), "--max", str(max_replicas), *extra_args]
        return processes.start(AUTOSCALER, cmd, self.run_dir, cwd=PROJECT_ROOT,
                               env={**self._env(), "LLMOPS_ADMIN_KEY": self._admin_key()})

    @contextlib.contextmanager
    def temporary_backend(self, model_dir: str, name: str = "eval") -> Iterator[tuple[str, str]]:
        """A backend serving `model_dir` on a free 127.0.0.1 port while the block runs, for work before a
        deployment (evaluation, red teaming); yields (base URL, model id to put in requests).

        Its pid file and log live in `<run_dir>/<name>/`, apart from the deployment's, so deploying or
        `make down` never stops it by accident, and it never stops a deployment.
        """
        _check_model_dir(model_dir)
        run = Path(self.run_dir) / name
        processes.stop_all(run)  # a leftover from a killed run
        (run / "tmp").mkdir(parents=True, exist_ok=True)
        port = processes.free_port("127.0.0.1")
        url, model_id = f"http://127.0.0.1:{port}", str(Path(model_dir).resolve())
        env = {**self._env(), "TMPDIR": str(run / "tmp")}
        try:
            backend = processes.start(BACKEND, self.backend_command(model_dir, port), run, env=env, cwd=run)
            processes.wait_healthy(f"{url}/health", self.startup_timeout, backend)
            processes.warm_up(url, model_id, backend, self.startup_timeout)
            yield url, model_id
        finally:
            processes.stop_all(run)

    def stop(self) -> list[str]:
        """Stop gateway, replicas and autoscaler (whatever has a pid file in `run_dir`); returns what was running."""
        stopped = processes.stop_all(self.run_dir)
        for name in ("deployment.json", "routes.json", processes.FLEET_FILE):
            (Path(self.run_dir) / name).unlink(missing_ok=True)
        return stopped

    def current(self) -> Deployment | None:
        """The deployment with its route table as the gateway keeps it, or None when nothing is deployed."""
        run = Path(self.run_dir)
        if not (run / "deployment.json").exists() or not (run / "routes.json").exists():
            return None
        return Deployment(**json.loads((run / "deployment.json").read_text()),
                          routes=json.loads((run / "routes.json").read_text()))

    def _require_current(self) -> Deployment:
        current = self.current()
        if current is None:
            raise RuntimeError(f"nothing is deployed under {self.run_dir}; call deploy() first")
        return current

    def status(self) -> dict:
        d = self.current()
        return {"deployment": None if d is None else {
                    "url": d.url, "model_name": d.model_name, "gateway_pid": d.gateway_pid,
                    "stable_version": d.model_version, "weights": d.weights,
                    "replicas": {v: e["replicas"] for v, e in d.versions.items()}},
                "processes": processes.status(self.run_dir)}

    # ---- clients

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def chat(self, url: str, model: str, prompt: str, max_tokens: int = 16, timeout: float = 120.0,
             user: str | None = None) -> dict:
        """One non-streaming chat completion through the gateway at `url`; raises on an HTTP error."""
        resp = httpx.post(f"{url}/v1/chat/completions", headers=self.headers(), timeout=timeout,
                          json={"model": model, "max_tokens": max_tokens, **({"user": user} if user else {}),
                                "messages": [{"role": "user", "content": prompt}]})
        if resp.status_code != 200:
            raise RuntimeError(f"chat completion at {url} failed: HTTP {resp.status_code} {resp.text[:500]}")
        return {**resp.json(), "model_version": resp.headers.get("x-llmops-model-version", "")}

    def smoke_test(self, deployment: Deployment, prompt: str = "Hello! What can you do?",
                   model_version: str | None = None) -> str:
        """A real chat request through the gateway (to `model_version`, default the stable one: sent as a
        user id the sticky split maps there); returns the reply, raises when it is empty or misrouted."""
        version = model_version or deployment.model_version
        route = RouteTable.parse(deployment.routes).models[deployment.model_name]
        user = next(u for u in (f"llmops-smoke-{i}" for i in range(100_000))
                    if choose_version(route, u).name == version)
        data = self.chat(deployment.url, deployment.model_name, prompt, user=user)
        reply = data["choices"][0]["message"].get("content") or ""
        if not reply:
            raise RuntimeError(f"smoke test: {deployment.url} answered an empty completion: {data}")
        if data["model_version"] != version:
            raise RuntimeError(f"smoke test: expected version {version}, the gateway answered from "
                               f"{data['model_version']!r}")
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


def _check_model_dir(model_dir: str) -> None:
    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"model_dir {model_dir!r} has no config.json: not a Hugging Face model directory")


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _pythonpath() -> str:
    return os.pathsep.join(p for p in [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")] if p)
