"""One home directory for all llmops state, and the paths derived from it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from llm_assets.storage import ObjectStore

DEFAULT_HOME = ".llmops"


def home_from_env() -> str:
    """The home directory: `LLMOPS_HOME`, else ./.llmops, as an absolute path."""
    return str(Path(os.environ.get("LLMOPS_HOME", DEFAULT_HOME)).resolve())


def _value(setting: str) -> str:
    """A setting's value: a `dg.EnvVar` is resolved by Dagster inside a run, and here when called outside one."""
    return (setting.get_value() or "") if isinstance(setting, dg.EnvVar) else setting


class ObjectStoreSettings(dg.ConfigurableResource):
    """How to reach an S3-compatible server; empty fields fall back to the AWS SDK's own defaults.

    `build_resources` passes the keys as `dg.EnvVar("AWS_ACCESS_KEY_ID")` / `("AWS_SECRET_ACCESS_KEY")`.
    """

    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""

    def object_store(self) -> ObjectStore:
        return ObjectStore(_value(self.s3_endpoint_url), _value(self.s3_region) or "us-east-1",
                           _value(self.s3_access_key_id), _value(self.s3_secret_access_key))


class SettingsResource(ObjectStoreSettings):
    """Where llmops keeps its state, and where the raw text comes from.

    Everything lives under `home` (lakehouse/, shards/, checkpoints/, models/, reports/, mlruns/,
    dagster/, run/); deleting it resets the platform.
    """

    home: str
    cache_dir: str = ""
    """Compiled ops and other rebuildable caches; empty: <home>/cache. Tests share one across homes."""
    source: str = ""
    """Raw text source: a directory, a glob, or a .jsonl/.parquet file. Empty: the venv's package docs."""
    storage_uri: str = ""
    """`s3://bucket/prefix`: the object-storage home of Delta tables, shards and checkpoints. Empty: all local."""

    def remote(self, *parts: str) -> str | None:
        """`<storage_uri>/<parts>` when there is an object-storage home, else None."""
        return "/".join([self.storage_uri.rstrip("/"), *parts]) if self.storage_uri else None

    def path(self, *parts: str) -> Path:
        """A path under the home directory, with its parent directories created."""
        p = Path(self.home).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def cache(self, *parts: str) -> Path:
        """A directory under the cache (compiled DeepSpeed ops, Hugging Face scratch), created if missing."""
        p = Path(self.cache_dir or Path(self.home) / "cache").joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def dir(self, *parts: str) -> Path:
        """A directory under the home, created if missing."""
        p = Path(self.home).joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p
