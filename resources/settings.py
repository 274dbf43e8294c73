"""One home directory for all llmops state, and the paths derived from it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

DEFAULT_HOME = ".llmops"


def home_from_env() -> str:
    """The home directory: `LLMOPS_HOME`, else ./.llmops, as an absolute path."""
    return str(Path(os.environ.get("LLMOPS_HOME", DEFAULT_HOME)).resolve())


class SettingsResource(dg.ConfigurableResource):
    """Where llmops keeps its state, and where the raw text comes from.

    Everything lives under `home` (lakehouse/, shards/, checkpoints/, models/, reports/, mlruns/,
    dagster/, run/); deleting it resets the platform.
    """

    home: str
    cache_dir: str = ""
    """Compiled ops and other rebuildable caches; empty: <home>/cache. Tests share one across homes."""
    source: str = ""
    """Raw text source: a directory, a glob, or a .jsonl/.parquet file. Empty: the venv's package docs."""

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
