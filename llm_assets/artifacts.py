"""What one asset hands to the next: small records of where an artifact lives and which version it is.

Dagster's IO manager stores these between steps; the artifacts themselves live under the home directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from resources.lakehouse import TableVersion


@dataclass(frozen=True)
class CommittedTable:
    """A table version pinned by a data commit (local backend or lakeFS)."""

    table: TableVersion
    commit_id: str


@dataclass(frozen=True)
class TokenizerArtifact:
    """A Hugging Face tokenizer directory and the sha256 of its tokenizer.json."""

    path: str
    sha256: str
    vocab_size: int
    eos_token: str = "<|endoftext|>"


@dataclass(frozen=True)
class ShardSet:
    """Packed token shards with `manifest.json` (per-shard sha256, tokenizer hash, data commit)."""

    path: str
    manifest_sha256: str
    data_commit: str
    seq_len: int
    remote: str = ""
    """`s3://...` copy of the shard directory when there is an object-storage home (see `tokens.assets.local_shards`)."""


@dataclass(frozen=True)
class BaseModelChoice:
    """The catalog entry chosen as the base model, and why."""

    name: str
    spec: dict
    reasons: list[str]


@dataclass(frozen=True)
class TrainedCheckpoint:
    """A finished DeepSpeed run: its checkpoint directory, final weights and MLflow run."""

    checkpoint_dir: str
    model_dir: str
    mlflow_run_id: str
    data_commit: str
    steps: int
    final_loss: float


@dataclass(frozen=True)
class ExportedModel:
    """A Hugging Face model directory registered as a version in the MLflow model registry."""

    path: str
    registered_name: str
    version: str
    mlflow_run_id: str
    data_commit: str


@dataclass(frozen=True)
class QuantizedModel:
    """An int8 copy of an exported model, with its size and perplexity change."""

    path: str
    source: ExportedModel
    size_ratio: float
    perplexity_delta: float


@dataclass(frozen=True)
class Endpoint:
    """A deployed model version behind an OpenAI-compatible URL."""

    url: str
    model: str
    model_version: str
    mlflow_run_id: str
    data_commit: str


@dataclass(frozen=True)
class OptimizedModel:
    """A pruned or distilled Hugging Face model directory derived from an exported model, with its trade-off."""

    path: str
    source: ExportedModel
    method: str
    size_ratio: float
    perplexity_delta: float
    speedup: float
