"""Keep a run's checkpoints in object storage too, so another machine can resume it from the bucket.

While torchrun trains, a `Publisher` thread uploads each newly sealed tag (`checkpoints.publish`: files
first, manifest last, then the remote `latest`); when the run ends it publishes whatever is left. Before a
launch on a machine with no checkpoint of its own, `fetch_newest` brings back the newest remote tag that
verifies. Paths on the object store are pyarrow.fs paths (`bucket/key`).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs

from llm_assets.training import checkpoints


def _remote_manifest(fs: pafs.FileSystem, remote: str, tag: str) -> bytes | None:
    try:
        with fs.open_input_stream(f"{remote}/{tag}/{checkpoints.MANIFEST}") as f:
            return f.read()
    except FileNotFoundError:
        return None


def publish_new(ckpt_dir: str | Path, fs: pafs.FileSystem, remote: str) -> list[str]:
    """Publish the sealed local tags whose manifest the bucket does not hold yet, oldest first (so the
    remote `latest` ends on the newest); returns their names. A tag still being written has no manifest
    and waits for the next call; one deleted locally mid-upload (pruned by `keep_checkpoints`) is left
    without a remote manifest, which `newest_valid` skips."""
    published = []
    for tag_dir in checkpoints.tags(ckpt_dir):
        manifest = tag_dir / checkpoints.MANIFEST
        try:
            local = manifest.read_bytes()
        except FileNotFoundError:
            continue
        if _remote_manifest(fs, remote, tag_dir.name) == local:
            continue
        try:
            checkpoints.publish(tag_dir, fs, remote)
        except (FileNotFoundError, ValueError):
            if tag_dir.exists():
                raise
            continue  # pruned while uploading: a newer tag supersedes it
        published.append(tag_dir.name)
    return published


def fetch_newest(fs: pafs.FileSystem, remote: str, ckpt_dir: str | Path) -> tuple[str | None, list[str]]:
    """Download the newest remote tag that verifies into `ckpt_dir` (None when there is none), and one line
    per newer tag skipped with its reason. Each tag is checked once, after its download."""
    found = fs.get_file_info(pafs.FileSelector(remote, allow_not_found=True))
    names = sorted(i.base_name for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("step"))
    skipped = []
    for tag in reversed(names):
        try:
            checkpoints.fetch(fs, remote, tag, ckpt_dir)
        except ValueError as e:
            shutil.rmtree(Path(ckpt_dir) / tag, ignore_errors=True)
            skipped.append(str(e))
            continue
        return tag, skipped
    return None, skipped


class Publisher:
    """`with Publisher(...)`: publish new tags every `every` seconds in a thread, and all of them at exit.

    A failed background upload is logged and retried at the next poll; the final publish at exit raises,
    unless the run itself failed: then its error is the one that propagates.
    """

    def __init__(self, ckpt_dir: str | Path, fs: pafs.FileSystem, remote: str, log: Callable[[str], None],
                 every: float = 5.0):
        self.ckpt_dir, self.fs, self.remote, self.log, self.every = Path(ckpt_dir), fs, remote, log, every
        self.published: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-publisher", daemon=True)

    def _publish(self) -> None:
        for tag in publish_new(self.ckpt_dir, self.fs, self.remote):
            self.published.append(tag)
            self.log(f"published checkpoint {tag} to s3://{self.remote}")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._publish()
            except (OSError, ValueError) as e:  # unreachable store, a tag pruned mid-upload: retried next time
                self.log(f"checkpoint upload to s3://{self.remote} failed, will retry: {e}")

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._publish()
        except (OSError, ValueError) as e:
            if exc_type is None:
                raise
            self.log(f"could not publish the checkpoints of the failed run to s3://{self.remote}: {e}")
