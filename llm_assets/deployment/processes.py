"""Detached server processes, tracked by pid files under a run directory.

A deployment starts its model server and gateway with `start_new_session=True`, so they keep running
after the Dagster run that started them has ended; `<run_dir>/<name>.pid` (JSON: pid, command, log)
is how a later run, or `make down`, finds and stops them:

    python -m llm_assets.deployment.processes status      # what runs under $LLMOPS_HOME/run
    python -m llm_assets.deployment.processes stop-all    # stop all of it (used by `make down`)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ManagedProcess:
    """A detached process started by `start`: its name, pid, command and log file."""

    name: str
    pid: int
    command: list[str]
    log: str


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
          cwd: str | Path | None = None) -> ManagedProcess:
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
    managed = ManagedProcess(name, proc.pid, list(command), str(log))
    tmp = pid_file(run_dir, name).with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": proc.pid, "command": managed.command, "log": managed.log}))
    tmp.replace(pid_file(run_dir, name))
    return managed


def read(run_dir: str | Path, name: str) -> ManagedProcess | None:
    """The process recorded in `<run_dir>/<name>.pid`, or None when there is no pid file."""
    path = pid_file(run_dir, name)
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    return ManagedProcess(name, int(rec["pid"]), rec.get("command", []), rec.get("log", ""))


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
                          "log": proc.log}
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
