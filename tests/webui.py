"""Start `dagster dev` on a free local port, talk to its GraphQL API, and stop it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
WORKSPACE = """
{ workspaceOrError { ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on RepositoryLocation { repositories { name } }
                          ... on PythonError { message } } } } } }"""
RUN_STATUS = 'query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DagsterDev:
    """`dagster dev -w workspace.yaml` as a user starts it, on 127.0.0.1 and a free port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        bin_dir = Path(sys.executable).parent
        # dagster dev ignores SIGINT/SIGTERM when started in a non-interactive background: give it its
        # own session with default SIGINT so SIGTERM to its group stops it.
        self.proc = subprocess.Popen(
            [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=REPO, env={**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}"},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def graphql(self, query: str, **variables) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dagster dev exited with {self.proc.returncode}"
            try:
                entries = self.graphql(WORKSPACE)["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]:
                    loaded = entries[0]["locationOrLoadError"]
                    assert loaded["__typename"] == "RepositoryLocation", loaded.get("message")
                    self.location = entries[0]["name"]
                    self.repository = loaded["repositories"][0]["name"]
                    return
            except (httpx.HTTPError, KeyError):
                pass
            time.sleep(1)
        raise TimeoutError(f"dagster dev did not answer on {self.url} within {timeout_s} s")

    def materialize(self, *asset_names: str, run_config: dict | None = None) -> str:
        """Launch a run of these assets, as the UI's Materialize button (or its launchpad, with
        `run_config`) does; returns the run id."""
        params = {
            "mode": "default", "runConfigData": run_config or {}, "executionMetadata": {"tags": []},
            "selector": {"repositoryLocationName": self.location, "repositoryName": self.repository,
                         "pipelineName": "__ASSET_JOB",
                         "assetSelection": [{"path": [name]} for name in asset_names]},
        }
        result = self.graphql(LAUNCH, params=params)["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def wait_run(self, run_id: str, timeout_s: float = 600) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.graphql(RUN_STATUS, id=run_id)["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still running after {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
