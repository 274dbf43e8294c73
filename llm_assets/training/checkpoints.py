"""Checkpoint directories that can be trusted after a crash: a manifest per tag, verified before resuming.

A DeepSpeed checkpoint is a directory `<checkpoint_dir>/step00000050/` written by every rank. Once
all ranks have written theirs, rank 0 lists each file with its size and sha256 in
`llmops_checkpoint.json` inside the tag, and only then points `latest` at it. A tag without that
manifest was cut off mid-write; a tag whose files differ from it was damaged afterwards. Resuming
takes the newest tag that verifies and names every tag it skipped.

A sealed tag can be published to object storage (`publish`: files first, manifest last, then `latest`);
`newest_valid` and `problem` take the bucket's pyarrow filesystem to verify it there, and `fetch` brings
a verified tag back to a local checkpoint directory for DeepSpeed to load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from llm_assets import storage
from llm_assets.tokens.shards import file_sha256

MANIFEST = "llmops_checkpoint.json"
LATEST = "latest"  # DeepSpeed's pointer file to the newest complete checkpoint tag


def tag_name(step: int) -> str:
    return f"step{step:08d}"


def tags(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint tag directories, oldest first."""
    return sorted(p for p in Path(ckpt_dir).glob("step*") if p.is_dir())


def seal(tag_dir: str | Path, step: int) -> None:
    """Write the manifest of a fully written tag (atomically: a crash leaves none, never half of one)."""
    tag_dir = Path(tag_dir)
    files = {str(p.relative_to(tag_dir)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(tag_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = tag_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1, sort_keys=True) + "\n")
    tmp.replace(tag_dir / MANIFEST)


def problem(tag_dir: str | Path, fs: pafs.FileSystem | None = None) -> str | None:
    """Why the tag cannot be resumed from, or None when every file matches its manifest.

    `fs`: the pyarrow filesystem `tag_dir` is on (an object store's: `bucket/key`); default: local.
    """
    fs, tag_dir = fs or pafs.LocalFileSystem(), str(tag_dir).rstrip("/")
    manifest_path = f"{tag_dir}/{MANIFEST}"
    if fs.get_file_info(manifest_path).type == pafs.FileType.NotFound:
        return f"{Path(tag_dir).name} has no {MANIFEST}: it was not completely written"
    try:
        with fs.open_input_stream(manifest_path) as f:
            files = json.loads(f.read())["files"]
    except (ValueError, KeyError) as e:
        return f"{manifest_path} is unreadable ({e})"
    for name, expected in files.items():
        path = f"{tag_dir}/{name}"
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return f"{path} is missing"
        if info.size != expected["bytes"]:
            return f"{path} has {info.size} bytes, its manifest says {expected['bytes']}"
        if storage.file_sha256(fs, path) != expected["sha256"]:
            return f"{path} is corrupt: its sha256 differs from the manifest"
    return None


def newest_valid(ckpt_dir: str | Path, fs: pafs.FileSystem | None = None) -> tuple[str | None, list[str]]:
    """The newest tag that verifies (or None), and one line per newer tag skipped, with its reason.

    `fs` as for `problem`: with an object store's, the tags in `ckpt_dir` (`bucket/key`) are checked there.
    """
    if fs is None:
        tag_dirs = [str(t) for t in tags(ckpt_dir)]
    else:
        found = fs.get_file_info(pafs.FileSelector(str(ckpt_dir).rstrip("/"), allow_not_found=True))
        tag_dirs = sorted(i.path for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("step"))
    skipped = []
    for tag_dir in reversed(tag_dirs):
        why = problem(tag_dir, fs)
        if why is None:
            return Path(tag_dir).name, skipped
        skipped.append(why)
    return None, skipped


def publish(tag_dir: str | Path, fs: pafs.FileSystem, ckpt_dir: str) -> str:
    """Upload a sealed tag into `ckpt_dir` on `fs` (`bucket/key`) and point that directory's `latest` at it.

    The manifest goes after every file it lists, so a tag cut off mid-upload has none and is skipped.
    """
    tag_dir = Path(tag_dir)
    if (why := problem(tag_dir)) is not None:
        raise ValueError(f"will not publish checkpoint {tag_dir}: {why}")
    storage.upload_dir(tag_dir, fs, f"{ckpt_dir}/{tag_dir.name}", last=MANIFEST)
    with fs.open_output_stream(f"{ckpt_dir}/{LATEST}") as f:
        f.write(tag_dir.name.encode())
    return tag_dir.name


def fetch(fs: pafs.FileSystem, ckpt_dir: str, tag: str, local_ckpt_dir: str | Path) -> Path:
    """Download a published tag from `ckpt_dir` on `fs` into `local_ckpt_dir`, verified against its manifest."""
    local = Path(local_ckpt_dir) / tag
    found = fs.get_file_info(pafs.FileSelector(f"{ckpt_dir}/{tag}", recursive=True))
    for info in found:
        if info.type == pafs.FileType.File:
            storage.download_file(fs, info.path, local / info.path.removeprefix(f"{ckpt_dir}/{tag}/"))
    if (why := problem(local)) is not None:
        raise ValueError(f"checkpoint {tag} fetched from {ckpt_dir} does not verify: {why}")
    return local


def mark_latest(ckpt_dir: str | Path, tag: str, keep: int) -> None:
    """Point `latest` at `tag` and delete all but the newest `keep` tags."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / f"{LATEST}.tmp"
    tmp.write_text(tag)
    tmp.replace(ckpt_dir / LATEST)
    for old in tags(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
