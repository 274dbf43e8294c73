"""Data versioning: a commit pins a version of every table. Local backend by default, lakeFS at scale."""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg
from deltalake import DeltaTable

from resources.lakehouse import TableVersion


def table_content_hash(table: TableVersion) -> str:
    """sha256 over the sha256 of every data file in one Delta version, in path order."""
    dt = DeltaTable(table.uri, version=table.version)
    outer = hashlib.sha256()
    for uri in sorted(dt.file_uris()):
        inner = hashlib.sha256()
        with open(uri.removeprefix("file://"), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{Path(uri).name}:{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


class VersioningResource(dg.ConfigurableResource, ABC):
    """Commits table versions on a branch; a commit id names the exact data a model was trained on."""

    branch: str = "main"

    @abstractmethod
    def commit(self, tables: list[TableVersion], message: str, metadata: dict[str, str] | None = None) -> str:
        """Commit the given table versions on `branch`; returns the commit id."""

    @abstractmethod
    def get_commit(self, commit_id: str) -> dict:
        """The commit's record: id, parent, branch, message, time and its tables."""

    @abstractmethod
    def head(self, branch: str | None = None) -> str | None:
        """The newest commit id on a branch, or None before the first commit."""


class LocalVersioning(VersioningResource):
    """Commits as JSON files under `root`: each pins Delta versions and content hashes of its tables."""

    root: str

    def _ref(self, branch: str) -> Path:
        return Path(self.root) / "refs" / "heads" / branch

    def head(self, branch: str | None = None) -> str | None:
        ref = self._ref(branch or self.branch)
        return ref.read_text().strip() if ref.exists() else None

    def commit(self, tables: list[TableVersion], message: str, metadata: dict[str, str] | None = None) -> str:
        record = {
            "parent": self.head(),
            "branch": self.branch,
            "message": message,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": metadata or {},
            "tables": {
                t.name: {"uri": t.uri, "delta_version": t.version, "rows": t.rows,
                         "content_hash": table_content_hash(t)}
                for t in tables
            },
        }
        body = json.dumps(record, sort_keys=True, indent=1)
        commit_id = hashlib.sha256(body.encode()).hexdigest()[:16]
        path = Path(self.root) / "commits" / f"{commit_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": commit_id, **record}, sort_keys=True, indent=1))
        ref = self._ref(self.branch)
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_suffix(".tmp")
        tmp.write_text(commit_id)
        tmp.replace(ref)  # atomic: a crash never leaves a half-written branch head
        return commit_id

    def get_commit(self, commit_id: str) -> dict:
        path = Path(self.root) / "commits" / f"{commit_id}.json"
        if not path.exists():
            raise KeyError(f"no commit {commit_id!r} under {self.root}")
        return json.loads(path.read_text())


class LakeFSVersioning(VersioningResource):
    """Commits on a lakeFS branch through the official SDK; the lakehouse root must live in `repository`."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    repository: str

    def _repo(self):
        import lakefs
        from lakefs.client import Client

        client = Client(host=self.endpoint, username=self.access_key_id, password=self.secret_access_key)
        return lakefs.Repository(self.repository, client=client)

    def commit(self, tables: list[TableVersion], message: str, metadata: dict[str, str] | None = None) -> str:
        meta = {**(metadata or {}), **{f"table.{t.name}": str(t.version) for t in tables}}
        ref = self._repo().branch(self.branch).commit(message=message, metadata=meta)
        return ref.get_commit().id

    def get_commit(self, commit_id: str) -> dict:
        c = self._repo().commit(commit_id).get_commit()
        return {"id": c.id, "parent": (c.parents or [None])[0], "message": c.message,
                "time": c.creation_date, "metadata": c.metadata}

    def head(self, branch: str | None = None) -> str | None:
        return self._repo().branch(branch or self.branch).get_commit().id
