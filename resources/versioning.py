"""Data versioning: a commit pins a version of every table. Local backend by default, lakeFS at scale.

Both backends offer the same git-like model over pinned Delta versions: commits on branches, tags,
`log`, `diff`, `checkout` (the exact table versions a run should read) and a gated `merge`.
"""

from __future__ import annotations

import calendar
import fcntl
import hashlib
import heapq
import json
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import dagster as dg
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from resources.lakehouse import TableVersion

# Branch names follow lakeFS's rule so a name that works locally also works on lakeFS; tags may hold dots (v1.2).
_BRANCH_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
_TAG_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_COMMIT_ID = re.compile(r"[0-9a-f]{6,64}")
# lakeFS commit metadata holds strings only: the pinned tables travel as one JSON value under this key.
_LAKEFS_TABLES_KEY = "llmops.tables"
_LAKEFS_BRANCH_KEY = "llmops.branch"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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


class UnknownRefError(ValueError, KeyError):
    """A branch, tag or commit id that does not exist (a KeyError too, as `get_commit` always raised)."""

    __str__ = ValueError.__str__  # KeyError would print the message in quotes


class MergeRefusedError(RuntimeError):
    """A merge whose source branch did not pass its checks."""


@dataclass(frozen=True)
class TableDiff:
    """How one table differs between two refs: `a` is the old side, `b` the new one."""

    table: str
    change: Literal["added", "removed", "changed", "unchanged"]
    version_a: int | None
    version_b: int | None
    rows_a: int | None
    rows_b: int | None
    rows_delta: int


def validate_branch_name(name: str) -> str:
    if not isinstance(name, str) or not _BRANCH_NAME.fullmatch(name):
        raise ValueError(f"invalid branch name {name!r}: use 1-128 letters, digits, '_' or '-', "
                         "not starting with '-'")
    return name


def validate_tag_name(name: str) -> str:
    if (not isinstance(name, str) or not _TAG_NAME.fullmatch(name) or ".." in name
            or name.endswith((".", ".lock"))):
        raise ValueError(f"invalid tag name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
                         "not starting with '-' or '.', without '..', not ending in '.' or '.lock'")
    return name


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _table_record(t: TableVersion) -> dict:
    """What a commit pins of one table; the content hash only where the files can be read here."""
    record = {"uri": t.uri, "delta_version": t.version, "rows": t.rows}
    if _is_local(t.uri):
        record["content_hash"] = table_content_hash(t)
    return record


def _same_version(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    if (a["uri"], a["delta_version"]) != (b["uri"], b["delta_version"]):
        return False
    # Equal versions with different hashes mean a table was rewritten under the same number.
    return a.get("content_hash") is None or b.get("content_hash") is None or a["content_hash"] == b["content_hash"]


def diff_tables(a: dict[str, dict], b: dict[str, dict]) -> list[TableDiff]:
    """Per-table differences between two commits' pinned tables, by table name."""
    out = []
    for name in sorted(a.keys() | b.keys()):
        ta, tb = a.get(name), b.get(name)
        change = ("added" if ta is None else "removed" if tb is None
                  else "unchanged" if _same_version(ta, tb) else "changed")
        rows_a, rows_b = (ta or {}).get("rows"), (tb or {}).get("rows")
        out.append(TableDiff(name, change, (ta or {}).get("delta_version"), (tb or {}).get("delta_version"),
                             rows_a, rows_b, (rows_b or 0) - (rows_a or 0)))
    return out


def merge_tables(base: dict[str, dict], into: dict[str, dict], source: dict[str, dict]) -> dict[str, dict]:
    """Three-way merge of pinned tables: every table the source changed since `base` takes the source's
    version (the source wins a conflict: its data is what passed the checks); the rest keep `into`'s."""
    merged = {}
    for name in base.keys() | into.keys() | source.keys():
        b, i, s = base.get(name), into.get(name), source.get(name)
        pick = i if _same_version(s, b) else s
        if pick is not None:
            merged[name] = pick
    return dict(sorted(merged.items()))


class VersioningResource(dg.ConfigurableResource, ABC):
    """Commits table versions on a branch; a commit id names the exact data a model was trained on.

    A ref is a branch name, a tag name or a commit id, resolved in that order. Commit records are dicts
    with id, parent (the first parent), parents, branch, message, time, metadata and tables
    ({name: {uri, delta_version, rows, content_hash}}).
    """

    branch: str = "main"

    @abstractmethod
    def commit(self, tables: list[TableVersion], message: str, metadata: dict[str, str] | None = None,
               branch: str | None = None) -> str:
        """Commit the given table versions on `branch` (default: the resource's); returns the commit id.

        A branch without a head gets a root commit, as the very first commit always did."""

    @abstractmethod
    def get_commit(self, commit_id: str) -> dict:
        """The commit's record (see the class docstring); UnknownRefError if there is none."""

    @abstractmethod
    def head(self, branch: str | None = None) -> str | None:
        """The newest commit id on a branch, or None before the first commit."""

    @abstractmethod
    def create_branch(self, name: str, from_ref: str | None = None, exist_ok: bool = False) -> str:
        """A new branch at `from_ref` (default: the resource's branch); returns its head commit id."""

    @abstractmethod
    def list_branches(self) -> dict[str, str]:
        """Every branch name with its head commit id."""

    @abstractmethod
    def tag(self, name: str, ref: str | None = None) -> str:
        """Tag the commit `ref` resolves to (default: the resource's branch); tags never move.
        Tagging the same commit again is a no-op; returns the commit id."""

    @abstractmethod
    def list_tags(self) -> dict[str, str]:
        """Every tag name with its commit id."""

    @abstractmethod
    def resolve(self, ref: str) -> str:
        """The commit id a branch, tag or commit id names; UnknownRefError if it names nothing."""

    @abstractmethod
    def log(self, ref: str | None = None, limit: int | None = None) -> list[dict]:
        """Commit records reachable from `ref` (default: the resource's branch), newest first,
        every commit before its parents."""

    @abstractmethod
    def _merge(self, source_branch: str, into_branch: str, message: str, metadata: dict[str, str]) -> str:
        """Merge after the checks passed; see `merge`."""

    def merge(self, source_branch: str, into_branch: str, checks_passed: bool, message: str | None = None,
              metadata: dict[str, str] | None = None) -> str:
        """Merge `source_branch` into `into_branch` once its checks passed; returns `into_branch`'s new head.

        Fast-forwards where `into_branch` has not moved since the fork (local backend; lakeFS always
        writes a merge commit), otherwise writes a merge commit with parents (into head, source head).
        Tables the source changed since the fork are pinned at the source's versions, others keep
        `into_branch`'s. Raises MergeRefusedError unless `checks_passed`.
        """
        validate_branch_name(source_branch)
        validate_branch_name(into_branch)
        if not checks_passed:
            raise MergeRefusedError(f"refusing to merge branch {source_branch!r} into {into_branch!r}: "
                                    f"the checks on {source_branch!r} did not pass")
        if source_branch == into_branch:
            raise ValueError(f"cannot merge branch {source_branch!r} into itself")
        return self._merge(source_branch, into_branch, message or f"merge {source_branch} into {into_branch}",
                           metadata or {})

    def checkout(self, ref: str) -> dict[str, TableVersion]:
        """The table versions a commit pins, by name: pass one to `LakehouseResource.read` to read old data."""
        tables = self.get_commit(self.resolve(ref))["tables"]
        return {name: TableVersion(name, t["uri"], t["delta_version"], t["rows"]) for name, t in tables.items()}

    def diff(self, ref_a: str, ref_b: str) -> list[TableDiff]:
        """How each table changed from `ref_a` to `ref_b` ("added" means only `ref_b` has it)."""
        return diff_tables(self.get_commit(self.resolve(ref_a))["tables"],
                           self.get_commit(self.resolve(ref_b))["tables"])

    def verify(self, ref: str) -> dict[str, str]:
        """Re-hash every pinned table that has a recorded content hash; returns {table: problem},
        empty when the commit's data is intact. A vacuumed or rewritten Delta version is a problem."""
        problems = {}
        for name, t in self.get_commit(self.resolve(ref))["tables"].items():
            if "content_hash" not in t:
                continue  # stored in lakeFS, where a commit's objects are immutable
            pinned = TableVersion(name, t["uri"], t["delta_version"], t["rows"])
            try:
                actual = table_content_hash(pinned)
            except (DeltaError, OSError) as e:
                problems[name] = f"delta version {pinned.version} of {pinned.uri} cannot be read: {e}"
                continue
            if actual != t["content_hash"]:
                problems[name] = (f"delta version {pinned.version} of {pinned.uri} changed: content hash "
                                  f"{actual[:12]} != recorded {t['content_hash'][:12]}")
        return problems


def _atomic_write(path: Path, text: str) -> None:
    """Write tmp + fsync + rename, so readers see the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself survive a crash
    finally:
        os.close(dir_fd)


def _normalized(record: dict) -> dict:
    """Records written before merges existed have only `parent`."""
    if "parents" not in record:
        record = {**record, "parents": [record["parent"]] if record.get("parent") else []}
    return record


class LocalVersioning(VersioningResource):
    """Commits as JSON files under `root`: each pins Delta versions and content hashes of its tables.

    Layout: commits/<id>.json, refs/heads/<branch>, refs/tags/<tag> (each ref holds a commit id).
    Every file is replaced atomically, and ref updates hold a lock, so concurrent runs cannot lose a commit.
    """

    root: str

    def _ref(self, branch: str) -> Path:
        return Path(self.root) / "refs" / "heads" / validate_branch_name(branch)

    def _tag_ref(self, tag: str) -> Path:
        return Path(self.root) / "refs" / "tags" / validate_tag_name(tag)

    def _commit_path(self, commit_id: str) -> Path:
        return Path(self.root) / "commits" / f"{commit_id}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time across processes: read head, write commit, move the ref."""
        lock = Path(self.root) / "lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def head(self, branch: str | None = None) -> str | None:
        ref = self._ref(branch or self.branch)
        return ref.read_text().strip() if ref.exists() else None

    def _write_commit(self, record: dict, branch: str) -> str:
        body = json.dumps(record, sort_keys=True, indent=1)
        commit_id = hashlib.sha256(body.encode()).hexdigest()[:16]
        # The commit file lands before the ref moves, so a ref never names a missing commit.
        _atomic_write(self._commit_path(commit_id), json.dumps({"id": commit_id, **record}, sort_keys=True, indent=1))
        _atomic_write(self._ref(branch), commit_id)
        return commit_id

    def commit(self, tables: list[TableVersion], message: str, metadata: dict[str, str] | None = None,
               branch: str | None = None) -> str:
        branch = validate_branch_name(branch or self.branch)
        pinned = {t.name: _table_record(t) for t in tables}  # hash outside the lock: it reads every file
        with self._locked():
            parent = self.head(branch)
            if parent is None and self._tag_ref(branch).exists():
                raise ValueError(f"cannot create branch {branch!r}: a tag has that name")
            record = {
                "parent": parent,
                "parents": [parent] if parent else [],
                "branch": branch,
                "message": message,
                "time": time.strftime(_TIME_FORMAT, time.gmtime()),
                "metadata": metadata or {},
                "tables": pinned,
            }
            return self._write_commit(record, branch)

    def get_commit(self, commit_id: str) -> dict:
        path = self._commit_path(commit_id)
        if not _COMMIT_ID.fullmatch(commit_id) or not path.exists():
            raise UnknownRefError(f"no commit {commit_id!r} under {self.root}")
        return _normalized(json.loads(path.read_text()))

    def resolve(self, ref: str) -> str:
        if isinstance(ref, str) and _BRANCH_NAME.fullmatch(ref) and (head := self.head(ref)) is not None:
            return head
        if isinstance(ref, str) and _TAG_NAME.fullmatch(ref) and (tag := self._tag_ref(ref)).exists():
            return tag.read_text().strip()
        if isinstance(ref, str) and _COMMIT_ID.fullmatch(ref) and self._commit_path(ref).exists():
            return ref
        raise UnknownRefError(f"unknown ref {ref!r} under {self.root}: not a branch "
                              f"({', '.join(self.list_branches()) or 'none yet'}), tag or commit id")

    def create_branch(self, name: str, from_ref: str | None = None, exist_ok: bool = False) -> str:
        ref = self._ref(name)
        with self._locked():
            start = self.resolve(from_ref or self.branch)
            if ref.exists():
                if exist_ok:
                    return self.head(name)
                raise ValueError(f"branch {name!r} already exists at {self.head(name)}")
            if self._tag_ref(name).exists():
                raise ValueError(f"cannot create branch {name!r}: a tag has that name")
            _atomic_write(ref, start)
        return start

    def _list(self, kind: str) -> dict[str, str]:
        folder = Path(self.root) / "refs" / kind
        if not folder.exists():
            return {}
        return {p.name: p.read_text().strip() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}

    def list_branches(self) -> dict[str, str]:
        return self._list("heads")

    def tag(self, name: str, ref: str | None = None) -> str:
        path = self._tag_ref(name)
        with self._locked():
            commit_id = self.resolve(ref or self.branch)
            if path.exists():
                if (existing := path.read_text().strip()) != commit_id:
                    raise ValueError(f"tag {name!r} already names commit {existing}; tags never move")
                return commit_id
            if _BRANCH_NAME.fullmatch(name) and self._ref(name).exists():
                raise ValueError(f"cannot create tag {name!r}: a branch has that name")
            _atomic_write(path, commit_id)
        return commit_id

    def list_tags(self) -> dict[str, str]:
        return self._list("tags")

    def _history(self, commit_id: str) -> dict[str, dict]:
        """Every commit reachable from `commit_id` by id, nearest first (breadth first)."""
        records, queue = {}, deque([commit_id])
        while queue:
            c = queue.popleft()
            if c not in records:
                records[c] = self.get_commit(c)
                queue.extend(records[c]["parents"])
        return records

    def log(self, ref: str | None = None, limit: int | None = None) -> list[dict]:
        start = self.resolve(ref or self.branch)
        records = self._history(start)
        order = {c: i for i, c in enumerate(records)}  # discovery order breaks ties of equal seconds
        children = {c: 0 for c in records}
        for r in records.values():
            for p in r["parents"]:
                children[p] += 1
        # Topological order, newest ready commit first: no commit is listed before a child of it.
        ready, out = [(_neg_time(records[start]), 0, start)], []
        while ready and (limit is None or len(out) < limit):
            _, _, c = heapq.heappop(ready)
            out.append(records[c])
            for p in records[c]["parents"]:
                children[p] -= 1
                if children[p] == 0:
                    heapq.heappush(ready, (_neg_time(records[p]), order[p], p))
        return out

    def _merge(self, source_branch: str, into_branch: str, message: str, metadata: dict[str, str]) -> str:
        with self._locked():
            source, into = self.head(source_branch), self.head(into_branch)
            for name, head in ((source_branch, source), (into_branch, into)):
                if head is None:
                    raise UnknownRefError(f"cannot merge: no branch {name!r} under {self.root}")
            source_history = self._history(source)
            if into in source_history:  # nothing happened on `into` since the fork: fast-forward
                _atomic_write(self._ref(into_branch), source)
                return source
            base = _merge_base(self._history(into), source_history)
            if base == source:
                return into  # `into` already holds every source commit
            tables = merge_tables(self.get_commit(base)["tables"] if base else {},
                                  self.get_commit(into)["tables"], self.get_commit(source)["tables"])
            record = {
                "parent": into,
                "parents": [into, source],
                "branch": into_branch,
                "message": message,
                "time": time.strftime(_TIME_FORMAT, time.gmtime()),
                "metadata": {**metadata, "merged_branch": source_branch, "merged_commit": source},
                "tables": tables,
            }
            return self._write_commit(record, into_branch)


def _merge_base(into_history: dict[str, dict], source_history: dict[str, dict]) -> str | None:
    """The nearest common ancestor: one that is no parent of another common ancestor (None: no common root)."""
    common = into_history.keys() & source_history.keys()
    superseded = {p for c in common for p in into_history[c]["parents"]}
    return next((c for c in into_history if c in common and c not in superseded), None)


def _neg_time(record: dict) -> int:
    """A heap key that pops the newest commit first."""
    return -calendar.timegm(time.strptime(record["time"], _TIME_FORMAT))


class LakeFSVersioning(VersioningResource):
    """Commits on a lakeFS branch through the official SDK; the lakehouse root must live in `repository`.

    A commit carries the pinned tables in its metadata (`table.<name>` = Delta version, and the full
    records as JSON under `llmops.tables`); lakeFS itself keeps branches, tags, history and merges.
    """

    endpoint: str
    access_key_id: str
    secret_access_key: str
    repository: str

    def _client(self):
        from lakefs.client import Client

        return Client(host=self.endpoint, username=self.access_key_id, password=self.secret_access_key)

    def _repo(self):
        import lakefs

        return lakefs.Repository(self.repository, client=self._client())

    def _merge_base(self, source_branch: str, into_branch: str) -> tuple[str, str, str]:
        """(base, source head, into head) from lakeFS's own merge-base search."""
        from lakefs.exceptions import api_exception_handler

        with api_exception_handler():
            r = self._client().sdk_client.refs_api.find_merge_base(self.repository, source_branch, into_branch)
        return r.base_commit_id, r.source_commit_id, r.destination_commit_id

    def _metadata(self, tables: dict[str, dict], metadata: dict[str, str], branch: str) -> dict[str, str]:
        return {**metadata, **{f"table.{name}": str(t["delta_version"]) for name, t in tables.items()},
                _LAKEFS_TABLES_KEY: json.dumps(tables, sort_keys=True), _LAKEFS_BRANCH_KEY: branch}

    @staticmethod
    def _record(c) -> dict:
        """A lakeFS Commit as the same record the local backend writes."""
        meta = dict(c.metadata or {})
        tables = json.loads(meta.pop(_LAKEFS_TABLES_KEY, "{}"))
        branch = meta.pop(_LAKEFS_BRANCH_KEY, None)
        meta = {k: v for k, v in meta.items() if not k.startswith("table.")}
        parents = list(c.parents or [])
        return {"id": c.id, "parent": parents[0] if parents else None, "parents": parents, "branch": branch,
                "message": c.message, "time": time.strftime(_TIME_FORMAT, time.gmtime(c.creation_date)),
                "metadata": meta, "tables": tables}

    def commit(self, tables: list[TableVersion], message: str, metadata: dict[str, str] | None = None,
               branch: str | None = None) -> str:
        branch = validate_branch_name(branch or self.branch)
        pinned = {t.name: _table_record(t) for t in tables}
        # allow_empty: the pins are the commit even when no object under the repository changed.
        ref = self._repo().branch(branch).commit(message=message, allow_empty=True,
                                                 metadata=self._metadata(pinned, metadata or {}, branch))
        return ref.id

    def get_commit(self, commit_id: str) -> dict:
        from lakefs.exceptions import NotFoundException

        try:
            return self._record(self._repo().commit(commit_id).get_commit())
        except NotFoundException as e:
            raise UnknownRefError(f"no commit {commit_id!r} in lakeFS repository {self.repository!r}") from e

    def head(self, branch: str | None = None) -> str | None:
        from lakefs.exceptions import NotFoundException

        try:
            return self._repo().branch(validate_branch_name(branch or self.branch)).get_commit().id
        except NotFoundException:
            return None

    def resolve(self, ref: str) -> str:
        from lakefs.exceptions import NotFoundException

        try:
            return self._repo().ref(ref).get_commit().id
        except NotFoundException as e:
            raise UnknownRefError(f"unknown ref {ref!r} in lakeFS repository {self.repository!r}: "
                                  "not a branch, tag or commit id") from e

    def create_branch(self, name: str, from_ref: str | None = None, exist_ok: bool = False) -> str:
        from lakefs.exceptions import ConflictException

        start = self.resolve(from_ref or self.branch)
        branch = self._repo().branch(validate_branch_name(name))
        try:
            branch.create(start, exist_ok=exist_ok)
        except ConflictException as e:
            raise ValueError(f"branch {name!r} already exists in lakeFS repository {self.repository!r}") from e
        return branch.get_commit().id

    def list_branches(self) -> dict[str, str]:
        return {b.id: b.get_commit().id for b in self._repo().branches()}

    def tag(self, name: str, ref: str | None = None) -> str:
        from lakefs.exceptions import ConflictException

        commit_id = self.resolve(ref or self.branch)
        tag = self._repo().tag(validate_tag_name(name))
        try:
            tag.create(commit_id)
        except ConflictException as e:
            if (existing := tag.get_commit().id) != commit_id:
                raise ValueError(f"tag {name!r} already names commit {existing}; tags never move") from e
        return commit_id

    def list_tags(self) -> dict[str, str]:
        return {t.id: t.get_commit().id for t in self._repo().tags()}

    def log(self, ref: str | None = None, limit: int | None = None) -> list[dict]:
        start = self.resolve(ref or self.branch)
        return [self._record(c) for c in self._repo().ref(start).log(max_amount=limit)]

    def _merge(self, source_branch: str, into_branch: str, message: str, metadata: dict[str, str]) -> str:
        base, source, into = self._merge_base(source_branch, into_branch)
        if base == source:
            return into  # `into` already holds every source commit
        tables = merge_tables(self.get_commit(base)["tables"], self.get_commit(into)["tables"],
                              self.get_commit(source)["tables"])
        meta = self._metadata(tables, {**metadata, "merged_branch": source_branch, "merged_commit": source},
                              into_branch)
        repo = self._repo()
        # source-wins matches merge_tables; allow_empty because the pins may be all that changed.
        return repo.branch(source_branch).merge_into(repo.branch(into_branch), message=message, metadata=meta,
                                                     strategy="source-wins", allow_empty=True)
