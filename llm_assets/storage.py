"""Object storage for llmops' state: a home at `s3://bucket/prefix` on S3 or any S3-compatible server.

Plain code (pyarrow.fs for files, options for delta-rs), no Dagster: the training worker uses it too.
Settings (see README, "From laptop to cluster"): LLMOPS_STORAGE_URI=s3://bucket/prefix, AWS_ENDPOINT_URL
(empty: AWS itself), AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_remote(uri: str) -> bool:
    return str(uri).startswith("s3://")


def bucket_path(uri: str) -> str:
    """`s3://bucket/key` as pyarrow.fs names it: `bucket/key`."""
    if not is_remote(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    return str(uri).removeprefix("s3://").rstrip("/")


@dataclass(frozen=True)
class ObjectStore:
    """Where and how to reach an S3-compatible server; the keys are the settings' values, never logged."""

    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""

    def delta_options(self) -> dict[str, str]:
        """delta-rs `storage_options`. One writer per table at a time (Dagster runs one materialization of an
        asset), so commits use S3's plain put; concurrent writers need delta-rs' DynamoDB locking provider."""
        options = {"AWS_REGION": self.region, "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            options["AWS_ALLOW_HTTP"] = str(self.endpoint_url.startswith("http://")).lower()
        if self.access_key_id:
            options["AWS_ACCESS_KEY_ID"] = self.access_key_id
            options["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        return options

    def filesystem(self) -> pafs.S3FileSystem:
        kwargs = {"region": self.region}
        if self.endpoint_url:
            url = urlparse(self.endpoint_url)
            kwargs.update(endpoint_override=url.netloc, scheme=url.scheme or "https")
        if self.access_key_id:
            kwargs.update(access_key=self.access_key_id, secret_key=self.secret_access_key)
        return pafs.S3FileSystem(**kwargs)


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def upload_dir(local_dir: str | Path, fs: pafs.FileSystem, dest: str, last: str | None = None) -> list[str]:
    """Copy every file under `local_dir` to `dest` (a pyarrow.fs path); `last` (a relative name) goes last,
    so a reader that finds it finds everything it lists. Returns the relative names, in upload order."""
    local_dir = Path(local_dir)
    names = sorted(str(p.relative_to(local_dir)) for p in local_dir.rglob("*") if p.is_file())
    if not names:
        raise ValueError(f"nothing to upload: {local_dir} has no files")
    if last is not None:
        if last not in names:
            raise ValueError(f"{local_dir} has no {last}")
        names = [n for n in names if n != last] + [last]
    for name in names:
        upload_file(local_dir / name, fs, f"{dest}/{name}")
    return names


def upload_file(local: str | Path, fs: pafs.FileSystem, dest: str) -> None:
    with open(local, "rb") as src, fs.open_output_stream(dest) as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)


def download_file(fs: pafs.FileSystem, src: str, local: str | Path) -> Path:
    """Copy one object to `local` (written beside it, then renamed: never half a file under the name)."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.part")
    with fs.open_input_stream(src) as f, open(tmp, "wb") as out:
        for block in iter(lambda: f.read(1 << 20), b""):
            out.write(block)
    tmp.replace(local)
    return local
