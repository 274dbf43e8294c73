"""Packed, checksummed token shards: Spark tokenizes, the driver packs and writes.

Layout of a shard directory:

    manifest.json          {seq_len, dtype, vocab_size, tokenizer_sha256, data_commit, seed, ...,
                            splits: {train: [{file, sequences, tokens, sha256}], validation: [...]}}
    train-00000.bin        little-endian uint16 (vocab < 65536) or uint32, `sequences_per_shard` × seq_len
    validation-00000.bin

Documents are sorted by doc_id, each followed by EOS, concatenated and cut into `seq_len` windows;
the tail that does not fill a window is dropped. The split of a document is a stable hash of
(seed, doc_id), so it never depends on partitioning and a document stays in its split as the corpus
grows. Same data and tokenizer give byte-identical shards and manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_assets import storage

if TYPE_CHECKING:  # the training worker reads shards without importing Spark
    from pyspark.sql import DataFrame
    from tokenizers import Tokenizer

SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
_TOKENIZED_SCHEMA = "doc_id string, split string, text_sha string, ids binary"


def assign_split(doc_id: str, validation_fraction: float, seed: int = 0) -> str:
    """"validation" for a stable `validation_fraction` of doc ids, else "train"."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big")
    return "validation" if h / 2**64 < validation_fraction else "train"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size < 2**16 else np.dtype("<u4")


def _batch_encoder(tokenizer_json: str, eos_id: int, validation_fraction: float, seed: int, dtype: str):
    """The executors' function: Arrow batches of (doc_id, text) in, batches of `_TOKENIZED_SCHEMA` out.

    Each batch's ids are filled into one array and handed to Arrow as a binary column, with no Python
    object per token. Each task encodes on its one core (`encode`, not `encode_batch`, whose thread pool
    per Python worker would oversubscribe the executor: N tasks × N threads). `tokenizer_json` (the
    file's text) travels in the function's closure, so each Python worker builds the tokenizer once per
    partition; this works the same on Spark Connect, where SparkContext.broadcast does not exist.
    """

    def encode(batches: Iterator) -> Iterator:
        # Self-contained (imports inside, no module-level helpers) so executors need no llmops install.
        import hashlib as _h

        import numpy as _np
        import pyarrow as pa
        from tokenizers import Tokenizer

        def split_of(doc_id: str) -> str:  # same rule as assign_split
            h = int.from_bytes(_h.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big")
            return "validation" if h / 2**64 < validation_fraction else "train"

        tok = Tokenizer.from_str(tokenizer_json)
        for batch in batches:
            doc_ids = batch.column("doc_id").to_pylist()
            texts = [t or "" for t in batch.column("text").to_pylist()]
            encoded = [tok.encode(t, add_special_tokens=False) for t in texts]
            ends = _np.cumsum([len(e) + 1 for e in encoded], dtype=_np.int64)
            ids = _np.empty(int(ends[-1]) if len(ends) else 0, dtype=dtype)
            for e, end in zip(encoded, ends):
                ids[end - 1 - len(e):end - 1] = e.ids
            ids[ends - 1] = eos_id
            offsets = _np.concatenate([[0], ends * ids.itemsize]).astype(_np.int32)
            yield pa.RecordBatch.from_arrays([
                pa.array(doc_ids, pa.string()),
                pa.array([split_of(d) for d in doc_ids], pa.string()),
                pa.array([_h.sha256(t.encode()).hexdigest() for t in texts], pa.string()),
                pa.Array.from_buffers(pa.binary(), len(doc_ids), [None, pa.py_buffer(offsets), pa.py_buffer(ids)]),
            ], names=["doc_id", "split", "text_sha", "ids"])

    return encode


def tokenize_documents(docs: DataFrame, tokenizer_json: str, eos_id: int, validation_fraction: float,
                       seed: int = 0, dtype: str = "<u4") -> DataFrame:
    """doc_id, split, text_sha, ids (token ids + EOS as little-endian `dtype` bytes), tokenized on the executors."""
    encode = _batch_encoder(tokenizer_json, eos_id, validation_fraction, seed, dtype)
    return docs.select("doc_id", "text").mapInArrow(encode, _TOKENIZED_SCHEMA)


def spill_tokenized(docs: DataFrame, spill_dir: str | Path, tokenizer_json: str, eos_id: int,
                    validation_fraction: float, seed: int = 0, dtype: str = "<u4") -> list[str]:
    """Tokenize on the executors, each task writing its batches (`_TOKENIZED_SCHEMA`) to an Arrow IPC file
    in `spill_dir`, a directory the executors and the driver share; returns the files.

    Only the file names pass through Spark: the tokens skip the JVM, its cache and a sort. Each task
    attempt writes a file of its own, so a retried task's leftovers are never listed.
    """
    encode = _batch_encoder(tokenizer_json, eos_id, validation_fraction, seed, dtype)
    spill_dir = str(spill_dir)

    def spill(batches: Iterator) -> Iterator:
        import uuid as _uuid

        import pyarrow as pa

        path, sink, writer = f"{spill_dir}/{_uuid.uuid4().hex}.arrow", None, None
        try:
            for batch in encode(batches):
                if writer is None:
                    sink = pa.OSFile(path, "wb")
                    writer = pa.ipc.new_file(sink, batch.schema)
                writer.write_batch(batch)
        finally:
            if writer is not None:
                writer.close()
                sink.close()
        if writer is not None:
            yield pa.RecordBatch.from_pydict({"file": [path]})

    return [r.file for r in docs.select("doc_id", "text").mapInArrow(spill, "file string").collect()]


def read_spilled_in_order(files: list[str], dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(split, ids) of the documents in `spill_tokenized`'s files, memory-mapped, in the order Spark's
    `orderBy("split", "doc_id", "text_sha")` gives (UTF-8 byte order, nulls first)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    batches = [b for f in files for b in pa.ipc.open_file(pa.memory_map(f)).read_all().to_batches() if b.num_rows]
    if not batches:
        return
    keys = pa.table({
        **{k: pa.chunked_array([b.column(k) for b in batches]) for k in ("split", "doc_id", "text_sha")},
        "batch": np.repeat(np.arange(len(batches)), [b.num_rows for b in batches]),
        "row": np.concatenate([np.arange(b.num_rows) for b in batches]),
    })
    order = pc.sort_indices(keys, sort_keys=[(k, "ascending", "at_start") for k in ("split", "doc_id", "text_sha")])
    ids = []
    for b in batches:
        column = b.column("ids")
        offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset:column.offset + len(column) + 1]
        ids.append((offsets, column.buffers()[2]))
    for split, batch, row in zip(keys["split"].take(order).to_pylist(), keys["batch"].take(order).to_numpy(),
                                 keys["row"].take(order).to_numpy()):
        offsets, data = ids[batch]
        start, end = int(offsets[row]), int(offsets[row + 1])
        yield split, np.frombuffer(data, dtype, (end - start) // dtype.itemsize, start)


class _SplitWriter:
    """Cuts one split's token stream into seq_len windows and writes fixed-size shards."""

    def __init__(self, out_dir: Path, split: str, seq_len: int, sequences_per_shard: int, dtype: np.dtype):
        self.out_dir, self.split, self.seq_len, self.dtype = out_dir, split, seq_len, dtype
        self.shard_tokens = seq_len * sequences_per_shard
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict] = []
        self.documents = 0

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)
        self.documents += 1
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        flat = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        head, rest = flat[:n], flat[n:]
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)
        name = f"{self.split}-{len(self.shards):05d}.bin"
        data = head.astype(self.dtype).tobytes()
        (self.out_dir / name).write_bytes(data)
        self.shards.append({"file": name, "sequences": n // self.seq_len, "tokens": n,
                            "sha256": hashlib.sha256(data).hexdigest()})

    def close(self) -> int:
        """Write the last, shorter shard; returns the dropped tail (tokens short of one window)."""
        full = self.buffered - self.buffered % self.seq_len
        dropped = self.buffered - full
        if full:
            self._flush(full)
        self.buffer, self.buffered = [], 0
        return dropped


@dataclass(frozen=True)
class ShardResult:
    path: Path
    manifest: dict
    manifest_sha256: str


def pack_shards(tokenized: Iterable[tuple[str, np.ndarray]], out_dir: str | Path, *, seq_len: int,
                sequences_per_shard: int, vocab_size: int, header: dict) -> ShardResult:
    """Pack (split, ids) documents, already in their final order, into shards plus manifest.json.

    Writes into a fresh directory next to `out_dir` and renames it into place, so readers never see
    a half-written shard set.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if sequences_per_shard < 1:
        raise ValueError(f"sequences_per_shard must be positive, got {sequences_per_shard}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        dtype = token_dtype(vocab_size)
        writers = {s: _SplitWriter(tmp, s, seq_len, sequences_per_shard, dtype) for s in SPLITS}
        for split, ids in tokenized:
            if len(ids) and int(np.max(ids)) >= vocab_size:
                raise ValueError(f"token id {int(np.max(ids))} is outside vocab_size={vocab_size}")
            writers[split].add(ids)
        dropped = {s: w.close() for s, w in writers.items()}
        manifest = {
            **header,
            "format": "llmops-token-shards/1",
            "seq_len": seq_len,
            "dtype": dtype.name,
            "byte_order": "little",
            "vocab_size": vocab_size,
            "sequences_per_shard": sequences_per_shard,
            "documents": {s: w.documents for s, w in writers.items()},
            "dropped_tokens": dropped,
            "splits": {s: w.shards for s, w in writers.items()},
        }
        body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        (tmp / MANIFEST).write_bytes(body)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShardResult(out_dir, manifest, hashlib.sha256(body).hexdigest())


def open_tokenizer(tokenizer_dir: str | Path, eos_token: str) -> tuple[Path, Tokenizer, int]:
    """(tokenizer.json path, tokenizer, EOS id) of a tokenizer directory, for packing documents."""
    from tokenizers import Tokenizer

    tok_path = Path(tokenizer_dir) / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"tokenizer file {tok_path} does not exist")
    tok = Tokenizer.from_str(tok_path.read_text())
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise ValueError(f"EOS token {eos_token!r} is not in the tokenizer {tok_path}")
    return tok_path, tok, eos_id


def encode_document(tok: Tokenizer, text: str, eos_id: int, dtype: np.dtype) -> np.ndarray:
    """One document's ids followed by EOS, on the driver: what `tokenize_documents` makes on the executors
    (whose function stays self-contained, so it cannot call this one)."""
    return np.array([*tok.encode(text, add_special_tokens=False).ids, eos_id], dtype=dtype)


def build_shards(docs: DataFrame, tokenizer_dir: str | Path, out_dir: str | Path, *, data_commit: str,
                 seq_len: int = 128, sequences_per_shard: int = 1024, validation_fraction: float = 0.05,
                 seed: int = 0, eos_token: str = "<|endoftext|>") -> ShardResult:
    """Tokenize `docs` (doc_id, text) with Spark and write packed shards for train and validation."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    tok_path, tok, eos_id = open_tokenizer(tokenizer_dir, eos_token)
    tokenizer_json = tok_path.read_text()
    vocab_size = tok.get_vocab_size()
    dtype = token_dtype(vocab_size)
    header = {"tokenizer_sha256": file_sha256(tok_path), "data_commit": data_commit, "seed": seed,
              "validation_fraction": validation_fraction, "eos_token_id": eos_id}
    out_dir = Path(out_dir)
    with _tokenized_in_order(docs, out_dir.parent / f".tokenized-{out_dir.name}-{uuid.uuid4().hex[:8]}",
                             tokenizer_json, eos_id, validation_fraction, seed, dtype) as stream:
        return pack_shards(stream, out_dir, seq_len=seq_len, sequences_per_shard=sequences_per_shard,
                           vocab_size=vocab_size, header=header)


@contextmanager
def even_file_splits(session):
    """Within the block, Spark cuts the files it scans into one equal split per core.

    Spark pads every file by `spark.sql.files.openCostInBytes` (4 MB) when it sizes splits, so a 45 MB file
    on 2 cores splits 54% / 46%, and the tokenizing job waits ~3 s for its bigger task. With the padding
    at cores − 1 bytes, the split size is the file size ÷ cores, rounded up. A classic session's conf only.
    """
    key = "spark.sql.files.openCostInBytes"
    before = session.conf.get(key, None)
    session.conf.set(key, str(max(session.sparkContext.defaultParallelism - 1, 0)))
    try:
        yield
    finally:
        if before is None:
            session.conf.unset(key)
        else:
            session.conf.set(key, before)


@contextmanager
def _tokenized_in_order(docs: DataFrame, spill_dir: Path, tokenizer_json: str, eos_id: int,
                        validation_fraction: float, seed: int, dtype: np.dtype):
    """(split, ids) of every document, in the shards' order: split, doc_id, then text_sha, which breaks
    doc_id ties so even a duplicated doc_id cannot make the order depend on partitions.

    On a local master the executors spill to `spill_dir` (see `spill_tokenized`). Elsewhere they may run
    on other machines, so the tokens come through Spark: cached, sorted, one partition at a time.
    """
    try:
        local = docs.sparkSession.sparkContext.master.startswith("local")
    except AttributeError:  # Spark Connect: its executors may run anywhere
        local = False
    if local:
        spill_dir.mkdir(parents=True)
        try:
            with even_file_splits(docs.sparkSession):
                files = spill_tokenized(docs, spill_dir, tokenizer_json, eos_id, validation_fraction, seed,
                                        dtype.str)
            yield read_spilled_in_order(files, dtype)
        finally:
            shutil.rmtree(spill_dir, ignore_errors=True)
        return
    tokenized = tokenize_documents(docs, tokenizer_json, eos_id, validation_fraction, seed, dtype.str).persist()
    try:
        ordered = tokenized.orderBy("split", "doc_id", "text_sha").select("split", "ids")
        rows = ordered.toLocalIterator(prefetchPartitions=True)  # tokens of one partition while Spark sorts the next
        yield ((row.split, np.frombuffer(row.ids, dtype=dtype)) for row in rows)
    finally:
        tokenized.unpersist()


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in shard directory {shard_dir}")
    return json.loads(path.read_text())


def open_split(shard_dir: str | Path, split: str, verify: bool = True) -> list[np.ndarray]:
    """Memory-mapped [sequences, seq_len] arrays, one per shard, checked against the manifest.

    Raises ValueError naming the file when its size or sha256 differs from the manifest.
    """
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} is not in {shard_dir / MANIFEST}; it has {sorted(manifest['splits'])}")
    seq_len, dtype = manifest["seq_len"], np.dtype(manifest["dtype"]).newbyteorder("<")
    arrays = []
    for entry in manifest["splits"][split]:
        path = shard_dir / entry["file"]
        if not path.exists():
            raise ValueError(f"shard {path} listed in the manifest is missing")
        if verify:
            actual = file_sha256(path)
            if actual != entry["sha256"]:
                raise ValueError(f"shard {path} is corrupt: sha256 {actual} != manifest {entry['sha256']}")
        expected = entry["sequences"] * seq_len * dtype.itemsize
        if path.stat().st_size != expected:
            raise ValueError(f"shard {path} has {path.stat().st_size} bytes, manifest says {expected}")
        arrays.append(np.memmap(path, dtype=dtype, mode="r", shape=(entry["sequences"], seq_len)))
    return arrays


def read_split(shard_dir: str, split: str) -> np.ndarray:
    """All sequences of one split as an in-memory [n_sequences, seq_len] array, sha256-verified."""
    arrays = open_split(shard_dir, split, verify=True)
    seq_len = read_manifest(shard_dir)["seq_len"]
    if not arrays:
        return np.zeros((0, seq_len), dtype=np.dtype(read_manifest(shard_dir)["dtype"]))
    return np.concatenate([np.asarray(a) for a in arrays])


def publish_shards(shard_dir: str | Path, fs, dest: str) -> list[str]:
    """Upload a shard directory to object storage (`fs`: a pyarrow.fs filesystem, `dest`: `bucket/key`).

    The shards go first and manifest.json last, so a manifest found there lists only uploaded files.
    """
    read_manifest(shard_dir)  # refuse a directory without one
    return storage.upload_dir(shard_dir, fs, dest, last=MANIFEST)


def fetch_shards(fs, src: str, shard_dir: str | Path) -> Path:
    """Download the shards a remote manifest lists into `shard_dir`, each checked against its sha256.

    Raises ValueError naming the object when one is missing or differs from the manifest.
    """
    shard_dir = Path(shard_dir)
    storage.download_file(fs, f"{src}/{MANIFEST}", shard_dir / MANIFEST)
    for entries in read_manifest(shard_dir)["splits"].values():
        for entry in entries:
            local = shard_dir / entry["file"]
            if local.exists() and file_sha256(local) == entry["sha256"]:
                continue
            try:
                storage.download_file(fs, f"{src}/{entry['file']}", local)
            except FileNotFoundError as e:
                raise ValueError(f"shard {src}/{entry['file']} listed in the manifest is missing") from e
            if file_sha256(local) != entry["sha256"]:
                raise ValueError(f"shard {src}/{entry['file']} is corrupt: its sha256 differs from the manifest")
    return shard_dir
