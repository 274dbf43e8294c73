"""Checkpoint directories that can be trusted after a crash: a manifest per tag, verified before resuming.

A DeepSpeed checkpoint is a directory `<checkpoint_dir>/step00000050/` written by every rank. Once
all ranks have written theirs, rank 0 lists each file with its size and sha256 in
`llmops_checkpoint.json` inside the tag, and only then points `latest` at it. A tag without that
manifest was cut off mid-write; a tag whose files differ from it was damaged afterwards. Resuming
takes the newest tag that verifies and names every tag it skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


def problem(tag_dir: str | Path) -> str | None:
    """Why the tag cannot be resumed from, or None when every file matches its manifest."""
    tag_dir = Path(tag_dir)
    manifest_path = tag_dir / MANIFEST
    if not manifest_path.exists():
        return f"{tag_dir.name} has no {MANIFEST}: it was not completely written"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{manifest_path} is unreadable ({e})"
    for name, expected in files.items():
        path = tag_dir / name
        if not path.exists():
            return f"{path} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, its manifest says {expected['bytes']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{path} is corrupt: its sha256 differs from the manifest"
    return None


def newest_valid(ckpt_dir: str | Path) -> tuple[str | None, list[str]]:
    """The newest tag that verifies (or None), and one line per newer tag skipped, with its reason."""
    skipped = []
    for tag_dir in reversed(tags(ckpt_dir)):
        why = problem(tag_dir)
        if why is None:
            return tag_dir.name, skipped
        skipped.append(why)
    return None, skipped


def mark_latest(ckpt_dir: str | Path, tag: str, keep: int) -> None:
    """Point `latest` at `tag` and delete all but the newest `keep` tags."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / f"{LATEST}.tmp"
    tmp.write_text(tag)
    tmp.replace(ckpt_dir / LATEST)
    for old in tags(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
