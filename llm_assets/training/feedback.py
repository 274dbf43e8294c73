"""Feedback examples for training: the feedback_dataset Delta table as chat transcripts, packed as token shards.

The monitoring stage's `feedback_dataset` asset (downstream of the endpoint, so no asset edge can lead
back into training) commits the prompt/response pairs users rated good; a training run reads one
committed version of it at run time. Each example is rendered the way the served model sees a chat:
the tokenizer's chat template (ChatML for llmops tokenizers; ChatML too when a tokenizer has none)
over the system message of the prompt version that answered it (from the prompt registry), the user's
prompt and the rated response. The transcripts are tokenized, each followed by EOS, repeated
`repeat` times (each pass in its own seeded order) and packed by `shards.pack_shards` into the same
fixed-length train shards and manifest as `token_shards`, so the worker reads them beside those.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llm_assets import storage
from llm_assets.deployment import prompts
from llm_assets.tokens import shards
from llm_assets.tokens.tokenizer import CHAT_TEMPLATE

TABLE = "feedback_dataset"
"""The Delta table monitoring's `feedback_dataset` asset writes."""
VERSION_TAG = "llmops/feedback_dataset_version"
"""A run tag pinning the table version a training run reads (the feedback sensor sets it); else the newest."""
COLUMNS = ["request_id", "prompt", "response", "prompt_version"]


@dataclass(frozen=True)
class FeedbackExamples:
    """One committed version of the feedback table, rendered as training transcripts."""

    version: int
    uri: str
    texts: list[str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.version, self.texts]).encode()).hexdigest()


def read_examples(lakehouse, version: int | None = None) -> tuple[int | None, pd.DataFrame]:
    """(Delta version, examples sorted by request_id) of the feedback table through the lakehouse resource;
    the newest version unless `version` is given; (None, empty) when the table does not exist."""
    latest = lakehouse.latest(TABLE)
    if latest is None:
        if version is not None:
            raise ValueError(f"{TABLE} version {version} was asked for, but {lakehouse.uri(TABLE)} is no Delta table")
        return None, pd.DataFrame(columns=COLUMNS)
    version = latest.version if version is None else version
    if not 0 <= version <= latest.version:
        raise ValueError(f"{TABLE} has versions 0..{latest.version}; version {version} does not exist")
    df = lakehouse.delta_table(TABLE, version).to_pandas()
    missing = [c for c in ("request_id", "prompt", "response") if c not in df]
    if missing:
        raise ValueError(f"{TABLE}@{version} at {lakehouse.uri(TABLE)} lacks columns {missing}")
    if "prompt_version" not in df:
        df["prompt_version"] = None
    return version, df[COLUMNS].sort_values("request_id", kind="stable").reset_index(drop=True)


def system_messages(lakehouse_root: str) -> dict[str, str]:
    """Prompt version → its template (the system message the gateway put before the user's prompt), from the
    prompt registry (kept under a local lakehouse root only; none under s3://)."""
    if storage.is_remote(lakehouse_root):
        return {}
    return {r["version"]: r["template"] for r in prompts.registered(lakehouse_root)}


def format_examples(examples: pd.DataFrame, tokenizer_dir: str | Path, systems: dict[str, str]) -> list[str]:
    """Each example as the chat transcript the served model sees, with the rated response as the reply."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    template = tok.chat_template or CHAT_TEMPLATE
    texts = []
    for row in examples.itertuples(index=False):
        system = systems.get(row.prompt_version) if isinstance(row.prompt_version, str) else None
        messages = [*([{"role": "system", "content": system}] if system else []),
                    {"role": "user", "content": row.prompt}, {"role": "assistant", "content": row.response}]
        texts.append(tok.apply_chat_template(messages, chat_template=template, tokenize=False))
    return texts


def pack_examples(texts: list[str], tokenizer_dir: str | Path, out_dir: str | Path, *, eos_token: str, seq_len: int,
                  sequences_per_shard: int, repeat: int, seed: int, header: dict) -> shards.ShardResult:
    """Train shards of `texts` (each + EOS), `repeat` passes, each pass in a permutation seeded by (seed, pass).

    The same texts, tokenizer and settings give byte-identical shards and manifest.
    """
    if repeat < 1:
        raise ValueError(f"feedback repeat={repeat} must be at least 1")
    tok_path, tok, eos_id = shards.open_tokenizer(tokenizer_dir, eos_token)
    vocab_size = tok.get_vocab_size()
    dtype = shards.token_dtype(vocab_size)
    docs = [shards.encode_document(tok, t, eos_id, dtype) for t in texts]
    order = [int(i) for r in range(repeat) for i in np.random.default_rng([seed, r]).permutation(len(docs))]
    return shards.pack_shards((("train", docs[i]) for i in order), out_dir, seq_len=seq_len,
                              sequences_per_shard=sequences_per_shard, vocab_size=vocab_size,
                              header={**header, "tokenizer_sha256": shards.file_sha256(tok_path), "seed": seed,
                                      "eos_token_id": eos_id, "examples": len(texts), "repeat": repeat})
