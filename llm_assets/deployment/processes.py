"""Detached server processes, tracked by pid files under a run directory.

A deployment starts its model servers and gateway with `start_new_session=True`, so they keep running
after the Dagster run that started them has ended; `<run_dir>/<name>.pid` (JSON: pid, command, log, meta)
is how a later run, the autoscaler, or `make down`, finds and stops them. `Fleet` starts and stops
model-server replicas and tells the gateway through its admin API (used by ServingResource and the
autoscaler alike):

    python -m llm_assets.deployment.processes status      # what runs under $LLMOPS_HOME/run
    python -m llm_assets.deployment.processes stop-all    # stop all of it (used by `make down`)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx


@dataclass(frozen=True)
class ManagedProcess:
    """A detached process started by `start`: its name, pid, command, log file and what it serves."""

    name: str
    pid: int
    command: list[str]
    log: str
    meta: dict = field(default_factory=dict)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1" if host in ("", "0.0.0.0") else host, port)) == 0


def pid_file(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.pid"


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie child of ours is reaped here)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reaps it if it is our exited child
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: started by an earlier run
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():  # Linux: an exited process whose parent has not reaped it yet
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def start(name: str, command: list[str], run_dir: str | Path, env: dict[str, str] | None = None,
          cwd: str | Path | None = None, meta: dict | None = None) -> ManagedProcess:
    """Start `command` detached (its own session), logging to `<run_dir>/<name>.log`; write its pid file.

    Refuses to start a second `name` while the first still runs.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read(run_dir, name)
    if existing is not None and is_running(existing.pid):
        raise RuntimeError(f"{name} already runs as pid {existing.pid} (pid file {pid_file(run_dir, name)}); "
                           f"stop it first")
    log = run_dir / f"{name}.log"
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    managed = ManagedProcess(name, proc.pid, list(command), str(log), dict(meta or {}))
    tmp = pid_file(run_dir, name).with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": proc.pid, "command": managed.command, "log": managed.log,
                               "meta": managed.meta}))
    tmp.replace(pid_file(run_dir, name))
    return managed


def read(run_dir: str | Path, name: str) -> ManagedProcess | None:
    """The process recorded in `<run_dir>/<name>.pid`, or None when there is no pid file."""
    path = pid_file(run_dir, name)
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    return ManagedProcess(name, int(rec["pid"]), rec.get("command", []), rec.get("log", ""), rec.get("meta", {}))


def stop(run_dir: str | Path, name: str, timeout: float = 15.0) -> bool:
    """SIGTERM the process group of `name`, SIGKILL it after `timeout`; remove the pid file.

    Returns True when a running process was stopped, False when there was none.
    """
    proc = read(run_dir, name)
    if proc is None:
        return False
    was_running = is_running(proc.pid)
    if was_running:
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_running(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_running(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while is_running(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        if is_running(proc.pid):
            raise RuntimeError(f"{name} (pid {proc.pid}) survived SIGKILL")
    pid_file(run_dir, name).unlink(missing_ok=True)
    return was_running


def _signal_group(pid: int, sig: int) -> None:
    # Each process leads its own session, so its group id is its pid; this also reaches its workers.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def status(run_dir: str | Path) -> dict[str, dict]:
    """Every pid file under `run_dir`: pid, running or not, command and log."""
    out = {}
    for path in sorted(Path(run_dir).glob("*.pid")):
        proc = read(run_dir, path.stem)
        out[proc.name] = {"pid": proc.pid, "running": is_running(proc.pid), "command": proc.command,
                          "log": proc.log, **({"meta": proc.meta} if proc.meta else {})}
    return out


def stop_all(run_dir: str | Path, timeout: float = 15.0) -> list[str]:
    """Stop every process with a pid file under `run_dir`; returns the names that were running."""
    return [name for name in status(run_dir) if stop(run_dir, name, timeout)]


def log_tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(url: str, timeout: float, process: ManagedProcess | None = None) -> None:
    """Poll `url` until it answers 200; fail early, with the log's tail, if `process` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and not is_running(process.pid):
            raise RuntimeError(f"{process.name} (pid {process.pid}) exited before {url} became healthy; "
                               f"log {process.log}:\n{log_tail(process.log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.25)
    tail = f"; log {process.log}:\n{log_tail(process.log)}" if process else ""
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s ({last}){tail}")


def warm_up(url: str, model_id: str, process: ManagedProcess, timeout: float) -> float:
    """One tiny completion straight to a model server, so the first real request does not pay for setup:
    `transformers serve --continuous-batching` builds its batching manager and KV cache on first use."""
    start_t = time.perf_counter()
    try:
        resp = httpx.post(f"{url}/v1/chat/completions", timeout=timeout,
                          json={"model": model_id, "max_tokens": 1, "messages": [{"role": "user", "content": "hello"}]})
    except httpx.HTTPError as e:
        raise RuntimeError(f"warm-up request to {url} failed: {e!r}; log {process.log}:\n{log_tail(process.log)}") from e
    if resp.status_code != 200:
        raise RuntimeError(f"warm-up request to {url} answered HTTP {resp.status_code}: {resp.text[:500]}; "
                           f"log {process.log}:\n{log_tail(process.log)}")
    return time.perf_counter() - start_t


# ---------------------------------------------------------------- replicas behind the gateway

FLEET_FILE = "serving.json"


@dataclass
class Fleet:
    """A deployment's model-server replicas, and the gateway's admin API that puts them in rotation.

    `<run_dir>/serving.json` records how to start one more replica (the backend command with `{model_dir}`
    and `{port}` placeholders, its environment) and where the gateway is, so that a later Dagster run or the
    autoscaler process can change the fleet. Each replica runs as `backend-<version>-<port>` with its URL,
    model and version in its pid file's meta.
    """

    run_dir: str
    backend_command: list[str]
    gateway_url: str = ""
    admin_key: str = ""
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 300.0

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "admin_key"}  # the key stays out of files
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.run_dir) / FLEET_FILE).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, run_dir: str | Path, admin_key: str) -> "Fleet":
        path = Path(run_dir) / FLEET_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: nothing is deployed under {run_dir}")
        return cls(**{**json.loads(path.read_text()), "run_dir": str(run_dir), "admin_key": admin_key})

    # ---- processes

    def replicas(self, version: str | None = None) -> list[ManagedProcess]:
        """The replica processes with pid files (of `version`, or all)."""
        procs = [read(self.run_dir, p.stem) for p in sorted(Path(self.run_dir).glob("backend-*.pid"))]
        return [p for p in procs if p is not None and (version is None or p.meta.get("version") == version)]

    def start_replicas(self, model: str, version: str, model_dir: str, backend_model: str, n: int,
                       log=None) -> list[str]:
        """Start `n` replicas of `version`, wait until each is healthy and warmed up; returns their URLs."""
        started: list[ManagedProcess] = []
        try:
            for _ in range(n):
                port = free_port("127.0.0.1")
                url = f"http://127.0.0.1:{port}"
                command = [c.format(model_dir=model_dir, port=port) for c in self.backend_command]
                tmp = Path(self.run_dir) / "tmp"
                tmp.mkdir(parents=True, exist_ok=True)
                proc = start(f"backend-{_safe(version)}-{port}", command, self.run_dir,
                             env={**self.env, "TMPDIR": str(tmp)}, cwd=self.run_dir,
                             meta={"url": url, "model": model, "version": version, "model_dir": model_dir})
                started.append(proc)
                if log:
                    log.info(f"started replica {proc.name} (pid {proc.pid}): {' '.join(command)}")
            for proc in started:
                wait_healthy(f"{proc.meta['url']}/health", self.startup_timeout, proc)
                seconds = warm_up(proc.meta["url"], backend_model, proc, self.startup_timeout)
                if log:
                    log.info(f"replica {proc.name} healthy, warmed up in {seconds:.1f}s")
        except BaseException:
            for proc in started:
                stop(self.run_dir, proc.name)
            raise
        return [p.meta["url"] for p in started]

    def stop_replica(self, url: str) -> bool:
        for proc in self.replicas():
            if proc.meta.get("url") == url:
                return stop(self.run_dir, proc.name)
        return False

    # ---- the gateway's admin API

    def admin(self, method: str, path: str, body: dict | None = None, timeout: float = 120.0) -> dict:
        if not self.gateway_url:
            raise RuntimeError(f"no gateway URL in {Path(self.run_dir) / FLEET_FILE}")
        resp = httpx.request(method, f"{self.gateway_url}{path}", json=body, timeout=timeout,
                             headers={"Authorization": f"Bearer {self.admin_key}"})
        if resp.status_code != 200:
            raise RuntimeError(f"gateway admin {method} {path} answered HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json()

    def routes(self) -> dict:
        return self.admin("GET", "/admin/routes")

    def put_routes(self, routes: dict) -> dict:
        return self.admin("PUT", "/admin/routes", routes)

    def add_replica(self, model: str, version: str, log=None) -> str:
        """Start one more replica of `version` and put it in rotation; returns its URL."""
        entry = self.routes()["models"][model]["versions"][version]
        model_dir = entry.get("model_dir") or entry["backend_model"]
        [url] = self.start_replicas(model, version, model_dir, entry.get("backend_model") or model_dir, 1, log)
        try:
            self.admin("POST", "/admin/replicas", {"model": model, "version": version, "url": url})
        except BaseException:
            self.stop_replica(url)
            raise
        return url

    def remove_replica(self, model: str, version: str, url: str | None = None) -> str:
        """Take a replica of `version` (default: its last) out of rotation, let it drain, stop it."""
        urls = self.routes()["models"][model]["versions"][version]["replicas"]
        url = (url or urls[-1]).rstrip("/")
        self.admin("DELETE", "/admin/replicas", {"model": model, "version": version, "url": url})
        self.stop_replica(url)
        return url


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def main(argv: list[str] | None = None) -> int:
    from resources.settings import home_from_env

    parser = argparse.ArgumentParser(prog="python -m llm_assets.deployment.processes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["stop-all", "status"])
    parser.add_argument("--run-dir", default=None, help="default: $LLMOPS_HOME/run")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir or Path(home_from_env()) / "run")
    if args.command == "status":
        print(json.dumps(status(run_dir), indent=2))
        return 0
    stopped = stop_all(run_dir)
    print(f"stopped {len(stopped)} process(es) under {run_dir}: {', '.join(stopped) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
