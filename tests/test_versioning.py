"""Data versioning on real Delta tables: branches, tags, log, diff, checkout, gated merge and verify.

The local backend runs for real. The lakeFS backend runs the same scenario against a server when
LAKEFS_ENDPOINT is set, and against a small in-memory stand-in for the SDK's Repository otherwise.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from lakefs.exceptions import ConflictException, NotFoundException
from lakefs.models import Commit

from resources.lakehouse import LakehouseResource, TableVersion
from resources.versioning import (LakeFSVersioning, LocalVersioning, MergeRefusedError, TableDiff,
                                  UnknownRefError, VersioningResource)

DOCS = pd.DataFrame({"id": [1, 2, 3], "text": ["alpha", "beta", "gamma"]})
DOCS_V1 = pd.DataFrame({"id": [1, 2, 3, 4, 5], "text": ["alpha", "beta", "gamma", "delta", "epsilon"]})
LABELS = pd.DataFrame({"id": [1, 2], "label": ["good", "bad"]})


def _write(lakehouse: LakehouseResource, name: str, df: pd.DataFrame) -> TableVersion:
    write_deltalake(lakehouse.uri(name), pa.Table.from_pandas(df, preserve_index=False), mode="overwrite")
    return lakehouse.latest(name)


def _read(t: TableVersion) -> pd.DataFrame:
    return DeltaTable(t.uri, version=t.version).to_pandas().sort_values("id", ignore_index=True)


@pytest.fixture
def lakehouse(tmp_path) -> LakehouseResource:
    return LakehouseResource(root=str(tmp_path / "lakehouse"))


@pytest.fixture
def local(tmp_path) -> LocalVersioning:
    return LocalVersioning(root=str(tmp_path / "lakehouse" / "_versions"))


def _branch_and_diff(v: VersioningResource, lakehouse: LakehouseResource, main: str, exp: str) -> tuple[str, str]:
    """Commit two tables on `main`, branch `exp`, rewrite one table there: the part every backend shares."""
    docs, labels = _write(lakehouse, "docs", DOCS), _write(lakehouse, "labels", LABELS)
    c1 = v.commit([docs, labels], "first curation", {"run_id": "run-1"}, branch=main)
    assert v.create_branch(exp, from_ref=main) == c1
    assert {main: c1, exp: c1}.items() <= v.list_branches().items()

    docs_v1 = _write(lakehouse, "docs", DOCS_V1)
    c2 = v.commit([docs_v1, labels], "more docs", {"run_id": "run-2"}, branch=exp)
    assert (v.head(main), v.head(exp)) == (c1, c2)
    assert v.get_commit(c2)["parents"] == [c1] and v.get_commit(c2)["metadata"] == {"run_id": "run-2"}

    assert v.diff(main, exp) == [
        TableDiff("docs", "changed", 0, 1, 3, 5, 2),
        TableDiff("labels", "unchanged", 0, 0, 2, 2, 0),
    ]
    assert [d.change for d in v.diff(exp, main)] == ["changed", "unchanged"]

    old = v.checkout(c1)
    assert old == {"docs": TableVersion("docs", docs.uri, 0, 3), "labels": TableVersion("labels", labels.uri, 0, 2)}
    pd.testing.assert_frame_equal(_read(old["docs"]), DOCS)  # the old data, though docs is now at version 1
    pd.testing.assert_frame_equal(_read(v.checkout(exp)["docs"]), DOCS_V1)

    with pytest.raises(MergeRefusedError, match=f"{exp!r} into {main!r}.*did not pass"):
        v.merge(exp, main, checks_passed=False)
    assert v.head(main) == c1
    return c1, c2


def test_local_branch_diff_checkout_and_gated_merge(local, lakehouse):
    c1, c2 = _branch_and_diff(local, lakehouse, "main", "experiment")

    assert local.merge("experiment", "main", checks_passed=True) == c2  # main had not moved: fast-forward
    assert local.head("main") == c2
    assert local.checkout("main") == local.checkout("experiment")
    assert local.checkout("main")["docs"].version == 1
    assert [c["id"] for c in local.log("main")] == [c2, c1]
    assert [c["id"] for c in local.log("main", limit=1)] == [c2]
    assert local.merge("experiment", "main", checks_passed=True) == c2  # nothing left to merge


def test_local_merge_commit_when_both_branches_moved(local, lakehouse):
    docs, labels = _write(lakehouse, "docs", DOCS), _write(lakehouse, "labels", LABELS)
    base = local.commit([docs, labels], "base")
    local.create_branch("experiment")
    docs_v1 = _write(lakehouse, "docs", DOCS_V1)
    on_exp = local.commit([docs_v1, labels], "new docs", branch="experiment")
    labels_v1 = _write(lakehouse, "labels", LABELS.assign(label="relabelled"))
    on_main = local.commit([docs, labels_v1], "relabel")

    merged = local.merge("experiment", "main", True, "promote experiment", {"run_id": "run-9"})
    record = local.get_commit(merged)
    assert local.head("main") == merged and local.head("experiment") == on_exp
    assert record["parents"] == [on_main, on_exp] and record["parent"] == on_main
    assert record["message"] == "promote experiment"
    assert record["metadata"] == {"run_id": "run-9", "merged_branch": "experiment", "merged_commit": on_exp}
    # experiment changed docs, main changed labels: each side's change survives
    assert {n: t.version for n, t in local.checkout(merged).items()} == {"docs": 1, "labels": 1}
    assert local.log("main")[0]["id"] == merged and local.log("main")[-1]["id"] == base
    assert {c["id"] for c in local.log("main")} == {merged, on_main, on_exp, base}

    # Both branches rewrite docs: the source's version wins, as it is the data that passed the checks.
    docs_v2 = _write(lakehouse, "docs", DOCS.head(1))
    local.commit([docs_v2, labels_v1], "main rewrites docs")
    docs_v3 = _write(lakehouse, "docs", DOCS.head(2))
    local.commit([docs_v3, labels], "experiment rewrites docs", branch="experiment")
    second = local.merge("experiment", "main", checks_passed=True)
    assert local.get_commit(second)["parents"] == [local.get_commit(second)["parent"], local.head("experiment")]
    assert {n: t.version for n, t in local.checkout(second).items()} == {"docs": 3, "labels": 1}


def test_local_tags_resolve_and_bad_names(local, lakehouse):
    c1 = local.commit([_write(lakehouse, "docs", DOCS)], "one")
    c2 = local.commit([_write(lakehouse, "docs", DOCS_V1)], "two")
    assert local.tag("v1.0", c1) == c1 and local.tag("latest") == c2
    assert local.list_tags() == {"latest": c2, "v1.0": c1}
    assert [local.resolve(r) for r in ("v1.0", "latest", "main", c1)] == [c1, c2, c2, c1]
    assert local.tag("v1.0", c1) == c1  # re-tagging the same commit is a no-op
    with pytest.raises(ValueError, match="tags never move"):
        local.tag("v1.0", c2)
    assert local.checkout("v1.0")["docs"].version == 0
    assert [d.change for d in local.diff("v1.0", "latest")] == ["changed"]

    with pytest.raises(UnknownRefError, match="unknown ref 'nope'.*main"):
        local.resolve("nope")
    with pytest.raises(KeyError):  # get_commit has always raised KeyError
        local.get_commit("0123456789abcdef")
    with pytest.raises(ValueError, match="unknown ref"):
        local.create_branch("feature", from_ref="no-such-branch")
    with pytest.raises(ValueError, match="already exists"):
        local.create_branch("main", from_ref=c1)
    assert local.create_branch("main", from_ref=c1, exist_ok=True) == c2
    with pytest.raises(ValueError, match="a branch has that name"):
        local.tag("main", c1)
    for bad in ("../escape", "-x", "with space", "a/b", "dots.are.for.tags", ""):
        with pytest.raises(ValueError, match="invalid branch name"):
            local.create_branch(bad)
    with pytest.raises(ValueError, match="invalid tag name"):
        local.tag("v1..0", c1)
    with pytest.raises(UnknownRefError, match="no branch 'nowhere'"):
        local.merge("main", "nowhere", checks_passed=True)
    with pytest.raises(ValueError, match="into itself"):
        local.merge("main", "main", checks_passed=True)
    assert local.head("never-committed") is None


def test_local_verify_detects_tampered_and_vacuumed_files(local, lakehouse):
    docs, labels = _write(lakehouse, "docs", DOCS), _write(lakehouse, "labels", LABELS)
    c1 = local.commit([docs, labels], "first")
    c2 = local.commit([_write(lakehouse, "docs", DOCS_V1), labels], "second")
    assert local.verify(c1) == {} and local.verify("main") == {}

    (docs_file,) = DeltaTable(docs.uri, version=0).file_uris()
    Path(docs_file).write_bytes(Path(docs_file).read_bytes()[:-8] + b"tampered")
    assert list(local.verify(c1)) == ["docs"] and "changed: content hash" in local.verify(c1)["docs"]
    assert local.verify(c2) == {}  # version 1 of docs lives in other files

    (labels_file,) = DeltaTable(labels.uri, version=0).file_uris()
    Path(labels_file).unlink()  # what a vacuum does to files no longer in the latest version
    problems = local.verify(c2)
    assert list(problems) == ["labels"] and "delta version 0" in problems["labels"]
    assert "cannot be read" in problems["labels"]

    (Path(docs.uri) / "_delta_log" / f"{0:020d}.json").unlink()  # what log cleanup does to old versions
    assert "cannot be read" in local.verify(c1)["docs"]


def test_local_commit_stays_backwards_compatible(local, lakehouse):
    """curated_corpus's call, and records written before branches and merges existed."""
    docs = _write(lakehouse, "docs", DOCS)
    root = Path(local.root)
    old = {"id": "00000000000000aa", "parent": None, "branch": "main", "message": "old", "time": "2024-01-01T00:00:00Z",
           "metadata": {"run_id": "r0"}, "tables": {"docs": {"uri": docs.uri, "delta_version": 0, "rows": 3,
                                                             "content_hash": "x" * 64}}}
    (root / "commits").mkdir(parents=True)
    (root / "commits" / "00000000000000aa.json").write_text(json.dumps(old))
    (root / "refs" / "heads").mkdir(parents=True)
    (root / "refs" / "heads" / "main").write_text("00000000000000aa")

    new = local.commit([docs], "curated corpus from deduped_corpus@0", {"run_id": "r1"})
    record = json.loads((root / "commits" / f"{new}.json").read_text())
    assert {"id", "parent", "branch", "message", "time", "metadata", "tables"} <= record.keys()
    assert record["parent"] == "00000000000000aa" and record["branch"] == "main"
    assert record["tables"]["docs"].keys() == {"uri", "delta_version", "rows", "content_hash"}
    assert local.get_commit("00000000000000aa")["parents"] == []
    assert [c["id"] for c in local.log()] == [new, "00000000000000aa"]
    assert local.diff("00000000000000aa", new)[0].change == "changed"  # same version, different content hash


def test_local_crash_before_ref_replace_keeps_old_head(local, lakehouse, monkeypatch):
    c1 = local.commit([_write(lakehouse, "docs", DOCS)], "one")
    real_replace = os.replace

    def crash_on_ref(src, dst):
        if Path(dst).parent.name == "heads":
            raise OSError("simulated crash while moving the branch head")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_ref)
    with pytest.raises(OSError, match="simulated crash"):
        local.commit([_write(lakehouse, "docs", DOCS_V1)], "two")
    monkeypatch.undo()
    assert local.head() == c1 and local.list_branches() == {"main": c1}
    assert not list(Path(local.root).rglob("*.tmp"))


def test_local_concurrent_commits_lose_nothing(local):
    def commit_many(n: int) -> None:
        for i in range(5):
            local.commit([], f"writer {n} commit {i}")

    threads = [threading.Thread(target=commit_many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = local.log()
    assert len(log) == 20 and log[-1]["parent"] is None
    assert all(a["parent"] == b["id"] for a, b in zip(log, log[1:]))  # one linear chain


# --- lakeFS -------------------------------------------------------------------------------------


class _FakeRepository:
    """A stand-in for `lakefs.Repository` holding commits in memory: only the calls LakeFSVersioning
    makes, with lakeFS's behaviour for them (merges always write a merge commit, tags never move)."""

    def __init__(self):
        self.commits: dict[str, Commit] = {}
        self.heads: dict[str, str] = {}
        self.tag_ids: dict[str, str] = {}
        self.heads["main"] = self.new_commit([], "Repository created", {})

    def new_commit(self, parents: list[str], message: str, metadata: dict) -> str:
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        self.commits[cid] = Commit(id=cid, parents=parents, committer="fake", message=message,
                                   creation_date=int(time.time()), meta_range_id="", metadata=dict(metadata))
        return cid

    def resolve(self, ref: str) -> str:
        cid = self.heads.get(ref) or self.tag_ids.get(ref) or (ref if ref in self.commits else None)
        if cid is None:
            raise NotFoundException(404, "Not Found")
        return cid

    def history(self, cid: str) -> list[str]:
        out, queue = [], [cid]
        while queue:
            c = queue.pop(0)
            if c not in out:
                out.append(c)
                queue.extend(self.commits[c].parents)
        return out

    def merge_base(self, source: str, into: str) -> tuple[str, str, str]:
        s, i = self.heads[source], self.heads[into]
        common = set(self.history(i)) & set(self.history(s))
        superseded = {p for c in common for p in self.commits[c].parents}
        return next(c for c in self.history(i) if c in common - superseded), s, i

    def branch(self, name): return _FakeBranch(self, name)
    def tag(self, name): return _FakeTag(self, name)
    def ref(self, name): return _FakeRef(self, name)
    def commit(self, cid): return _FakeRef(self, cid)
    def branches(self): return [_FakeBranch(self, b) for b in sorted(self.heads)]
    def tags(self): return [_FakeTag(self, t) for t in sorted(self.tag_ids)]


class _FakeRef:
    def __init__(self, repo: _FakeRepository, ref_id: str):
        self.repo, self.id = repo, ref_id

    def get_commit(self) -> Commit:
        return self.repo.commits[self.repo.resolve(self.id)]

    def log(self, max_amount=None):
        return [self.repo.commits[c] for c in self.repo.history(self.repo.resolve(self.id))][:max_amount]


class _FakeBranch(_FakeRef):
    def create(self, source_reference, exist_ok=False):
        if self.id in self.repo.heads and not exist_ok:
            raise ConflictException(409, "Conflict")
        self.repo.heads.setdefault(self.id, self.repo.resolve(source_reference))
        return self

    def commit(self, message, metadata=None, allow_empty=False):
        self.repo.heads[self.id] = self.repo.new_commit([self.repo.heads[self.id]], message, metadata or {})
        return _FakeRef(self.repo, self.repo.heads[self.id])

    def merge_into(self, destination_branch, message="", metadata=None, strategy=None, allow_empty=False):
        dest = destination_branch.id
        parents = [self.repo.heads[dest], self.repo.heads[self.id]]
        self.repo.heads[dest] = self.repo.new_commit(parents, message, metadata or {})
        return self.repo.heads[dest]


class _FakeTag(_FakeRef):
    def create(self, source_ref, exist_ok=False):
        if self.id in self.repo.tag_ids:
            raise ConflictException(409, "Conflict")
        self.repo.tag_ids[self.id] = self.repo.resolve(source_ref)
        return self


def test_fake_lakefs_sdk_runs_the_same_scenario(lakehouse):
    repo = _FakeRepository()

    class FakeLakeFSVersioning(LakeFSVersioning):
        def _repo(self):
            return repo

        def _merge_base(self, source_branch, into_branch):
            return repo.merge_base(source_branch, into_branch)

    v = FakeLakeFSVersioning(endpoint="http://fake", access_key_id="k", secret_access_key="s", repository="r")
    c1, c2 = _branch_and_diff(v, lakehouse, "main", "experiment")
    meta = repo.commits[c2].metadata
    assert meta["table.docs"] == "1" and meta["table.labels"] == "0"  # readable in the lakeFS UI

    v.tag("v1", c1)
    assert v.resolve("v1") == c1 and v.list_tags() == {"v1": c1}
    with pytest.raises(ValueError, match="tags never move"):
        v.tag("v1", c2)
    with pytest.raises(UnknownRefError):
        v.resolve("nope")

    merged = v.merge("experiment", "main", checks_passed=True)
    assert v.get_commit(merged)["parents"] == [c1, c2]  # lakeFS writes a merge commit even here
    assert v.checkout("main") == v.checkout("experiment")
    assert v.log("main")[0]["id"] == merged and {c1, c2} <= {c["id"] for c in v.log("main")}
    assert v.merge("experiment", "main", checks_passed=True) == merged  # nothing left to merge
    assert v.verify("main") == {}


@pytest.mark.skipif(not os.environ.get("LAKEFS_ENDPOINT"), reason="needs a lakeFS server (LAKEFS_ENDPOINT)")
def test_lakefs_branch_tag_merge_against_server(lakehouse):
    """On the repository LAKEFS_REPOSITORY (default llmops), on throwaway branches it deletes afterwards."""
    import lakefs

    v = LakeFSVersioning(endpoint=os.environ["LAKEFS_ENDPOINT"], access_key_id=os.environ["LAKEFS_ACCESS_KEY_ID"],
                         secret_access_key=os.environ["LAKEFS_SECRET_ACCESS_KEY"],
                         repository=os.environ.get("LAKEFS_REPOSITORY", "llmops"))
    run = uuid.uuid4().hex[:8]
    main, exp, tag = f"test-{run}-main", f"test-{run}-exp", f"test-{run}"
    repo = v._repo()
    repo.branch(main).create(repo.properties.default_branch)
    try:
        c1, c2 = _branch_and_diff(v, lakehouse, main, exp)
        assert v.tag(tag, c1) == c1 and v.resolve(tag) == c1
        merged = v.merge(exp, main, checks_passed=True)
        assert v.head(main) == merged and set(v.get_commit(merged)["parents"]) == {c1, c2}
        assert v.checkout(main) == v.checkout(exp)
        assert [c["id"] for c in v.log(main, limit=1)] == [merged]
    finally:
        for ref in (repo.tag(tag),):
            try:
                ref.delete()
            except lakefs.exceptions.NotFoundException:
                pass
        for name in (exp, main):
            try:
                repo.branch(name).delete()
            except lakefs.exceptions.NotFoundException:
                pass


def test_append_with_a_new_column_widens_the_table(spark, lakehouse):
    from datetime import datetime

    lakehouse.write(spark.createDataFrame([("a", 1, datetime(2026, 1, 1))], "id string, n long, at timestamp"),
                    "metrics", "first")
    v1 = lakehouse.write(spark.createDataFrame([("b", 2, datetime(2026, 1, 2), 7.5)],
                                               "id string, n long, at timestamp, gpu_mb double"),
                         "metrics", "with a GPU column", mode="append")
    assert v1.version == 2 and v1.rows == 2  # version 1 is the schema change itself
    rows = {r["id"]: r.asDict() for r in lakehouse.read(spark, v1).collect()}
    assert rows["a"]["gpu_mb"] is None and rows["b"]["gpu_mb"] == 7.5
    assert rows["b"]["at"] == datetime(2026, 1, 2)
    assert DeltaTable(v1.uri).to_pandas().set_index("id")["gpu_mb"].isna().to_dict() == {"a": True, "b": False}
    assert lakehouse.read(spark, "metrics", 0).columns == ["id", "n", "at"]  # older versions keep their schema
