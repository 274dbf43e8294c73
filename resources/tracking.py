"""Experiment tracking and the model registry on MLflow: a sqlite store under the home, or a server."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
import mlflow
from mlflow.tracking import MlflowClient


class TrackingResource(dg.ConfigurableResource):
    """MLflow. `tracking_uri` is `sqlite:////abs/mlflow.db` embedded, or `http://host:5000` for a server.

    `artifact_root` (under the home) holds the embedded store's artifacts; a server stores its own.
    """

    tracking_uri: str
    artifact_root: str
    experiment: str = "llmops"

    def client(self) -> MlflowClient:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return MlflowClient(self.tracking_uri, self.tracking_uri)

    def experiment_id(self) -> str:
        client = self.client()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        if self.tracking_uri.startswith(("http://", "https://")):
            # A server keeps artifacts where its --artifacts-destination says (e.g. s3://), proxied to clients.
            return client.create_experiment(self.experiment)
        location = Path(self.artifact_root).resolve().as_uri() if "://" not in self.artifact_root else self.artifact_root
        return client.create_experiment(self.experiment, artifact_location=location)

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        """Create a run and return its id; workers log into it by id."""
        run = self.client().create_run(self.experiment_id(), run_name=run_name, tags=tags)
        return run.info.run_id

    def run_url(self, run_id: str) -> str:
        return f"{self.tracking_uri}#/experiments/{self.experiment_id()}/runs/{run_id}"

    def register_model(self, name: str, model_dir: str, run_id: str) -> str:
        """Log `model_dir` as the run's `model` artifact and register it as a new version; returns it."""
        client = self.client()
        client.log_artifacts(run_id, model_dir, artifact_path="model")
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        return str(client.create_model_version(name, source, run_id=run_id).version)

    def promote(self, name: str, version: str, alias: str = "promoted", previous_alias: str = "previous") -> None:
        """Point the registered model's `alias` at `version` (the deployed one); the version it pointed at
        before, when another, becomes `previous_alias` (what a rollback goes back to)."""
        replaced = self.promoted_version(name, alias)
        client = self.client()
        client.set_registered_model_alias(name, alias, version)
        if replaced is not None and replaced != str(version):
            client.set_registered_model_alias(name, previous_alias, replaced)

    def promoted_version(self, name: str, alias: str = "promoted") -> str | None:
        """The version `alias` points at, or None when nothing was promoted yet."""
        try:
            return str(self.client().get_model_version_by_alias(name, alias).version)
        except mlflow.exceptions.MlflowException:
            return None

    def previous_version(self, name: str) -> str | None:
        """The promoted version that the current promoted one replaced, or None."""
        return self.promoted_version(name, "previous")

    def model_dir(self, name: str, version: str, cache_dir: str | Path) -> str:
        """A local directory holding registered `version`'s model: its source artifact when that is a local
        directory, else a copy downloaded once (e.g. from an s3:// artifact root) into
        `<cache_dir>/<name>/v<version>`."""
        source = self.client().get_model_version(name, version).source
        local = _local_path(source)
        if local is not None and local.is_dir():
            return str(local)
        target = Path(cache_dir) / name / f"v{version}"
        if target.is_dir():
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f".v{version}-", dir=target.parent)  # no half-downloaded target
        try:
            downloaded = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=scratch,
                                                             tracking_uri=self.tracking_uri)
            Path(downloaded).rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return str(target)

    def tag_rolled_back(self, name: str, version: str, reason: str) -> None:
        """Mark `version` as rolled back off the endpoint, with why (tag `llmops.rolled_back`)."""
        self.client().set_model_version_tag(name, version, ROLLED_BACK_TAG, reason[:5000] or "rolled back")

    def rolled_back_reason(self, name: str, version: str) -> str | None:
        """Why `version` was rolled back, or None when it never was."""
        return self.client().get_model_version(name, version).tags.get(ROLLED_BACK_TAG)


ROLLED_BACK_TAG = "llmops.rolled_back"


def _local_path(uri: str) -> Path | None:
    """The local path of a `file://` URI or a plain path; None for any other scheme."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if not parsed.scheme else None
