"""Tokens stage: a byte-level BPE tokenizer trained on the curated corpus, and packed token shards."""

import shutil
import uuid
from pathlib import Path

import dagster as dg

from llm_assets import storage
from llm_assets.artifacts import CommittedTable, ShardSet, TokenizerArtifact
from llm_assets.tokens import shards, tokenizer as bpe
from resources.lakehouse import LakehouseResource
from resources.settings import SettingsResource
from resources.spark import SparkResource
from resources.versioning import VersioningResource

DATA_REF_TAG = "llmops/data_ref"
"""A run tag naming a data commit, tag or branch: the run tokenizes that version of the curated corpus."""


def corpus_for_run(context: dg.AssetExecutionContext, curated_corpus: CommittedTable,
                   versioning: VersioningResource) -> CommittedTable:
    """The curated corpus of the data commit the run's `llmops/data_ref` tag names, else the newest one."""
    ref = context.run.tags.get(DATA_REF_TAG)
    if not ref:
        return curated_corpus
    commit = versioning.resolve(ref)
    pinned = versioning.checkout(commit)
    if "curated_corpus" not in pinned:
        raise ValueError(f"run tag {DATA_REF_TAG}={ref!r}: data commit {commit} pins no curated_corpus "
                         f"(it pins {sorted(pinned)})")
    context.log.info(f"{DATA_REF_TAG}={ref}: using curated_corpus@{pinned['curated_corpus'].version} "
                     f"of data commit {commit}")
    return CommittedTable(table=pinned["curated_corpus"], commit_id=commit)


def local_shards(token_shards: ShardSet, settings: SettingsResource) -> str:
    """The shard directory to read here: the recorded one, else the object-storage copy fetched into the home.

    A fetch lands whole or not at all (a fresh directory renamed into place), each shard checked against
    the manifest's sha256 and the manifest against the one the asset recorded.
    """
    if (Path(token_shards.path) / shards.MANIFEST).exists() or not token_shards.remote:
        return token_shards.path
    local = settings.dir("shards") / Path(token_shards.path).name
    if (local / shards.MANIFEST).exists():
        return str(local)
    tmp = local.with_name(f".fetch-{local.name}-{uuid.uuid4().hex[:8]}")
    try:
        shards.fetch_shards(settings.object_store().filesystem(), storage.bucket_path(token_shards.remote), tmp)
        actual = shards.file_sha256(tmp / shards.MANIFEST)
        if actual != token_shards.manifest_sha256:
            raise ValueError(f"token_shards at {token_shards.remote}: manifest sha256 {actual} differs from the "
                             f"materialized one {token_shards.manifest_sha256} (the bucket copy was replaced)")
        tmp.rename(local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(local)


class TokenizerConfig(dg.Config):
    """Used by: tokenizer. Trains a byte-level BPE on the corpus, unless `local_path` names one to load."""

    local_path: str = ""
    """A Hugging Face tokenizer (or model) directory to use as is, e.g. the base model's for fine-tuning."""

    vocab_size: int = 4096
    min_frequency: int = 2
    special_tokens: list[str] = [bpe.EOS_TOKEN, bpe.PAD_TOKEN]
    """The first is EOS (also BOS); the second is PAD."""
    chat_tokens: list[str] = list(bpe.CHAT_TOKENS)
    """Tokens the ChatML chat template uses."""
    max_documents: int = 50_000
    """Sample cap: the first N documents by doc_id train the tokenizer."""
    max_chars_per_document: int = 200_000
    model_max_length: int = 2048


class ShardConfig(dg.Config):
    """Used by: token_shards."""

    seq_len: int = 128
    sequences_per_shard: int = 1024
    validation_fraction: float = 0.05
    seed: int = 0
    """Salts the doc_id hash that picks the split."""


@dg.asset(group_name="tokens", kinds={"spark", "huggingface"})
def tokenizer(context: dg.AssetExecutionContext, config: TokenizerConfig, curated_corpus: CommittedTable,
              settings: SettingsResource, spark: SparkResource, lakehouse: LakehouseResource,
              versioning: VersioningResource) -> dg.Output[TokenizerArtifact]:
    """Byte-level BPE tokenizer trained on the curated corpus (with a chat template), or loaded from a directory."""
    if config.local_path:
        path, sha, eos = bpe.import_hf_tokenizer(config.local_path, settings.dir("tokenizers"))
        vocab = bpe.load_tokenizer(path).get_vocab_size(with_added_tokens=True)
        context.log.info(f"loaded tokenizer {config.local_path} (vocab {vocab}, eos {eos!r}) -> {path}")
        return dg.Output(TokenizerArtifact(path=str(path), sha256=sha, vocab_size=vocab, eos_token=eos), metadata={
            "tokenizer_dir": dg.MetadataValue.path(str(path)), "sha256": sha, "vocab_size": vocab,
            "loaded_from": dg.MetadataValue.path(config.local_path), "eos_token": eos})
    curated_corpus = corpus_for_run(context, curated_corpus, versioning)
    if len(config.special_tokens) < 2:
        raise ValueError("TokenizerConfig.special_tokens needs at least EOS and PAD, e.g. ['<|endoftext|>', '<|pad|>']")
    docs = lakehouse.read(spark.session(), curated_corpus.table)
    sample = docs.select("doc_id", "text").orderBy("doc_id").limit(config.max_documents)
    counted = {"docs": 0, "chars": 0}

    def texts():
        for row in sample.toLocalIterator():
            text = (row.text or "")[: config.max_chars_per_document]
            counted["docs"] += 1
            counted["chars"] += len(text)
            yield text

    tok = bpe.train_bpe(texts(), vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                        special_tokens=[*config.special_tokens, *config.chat_tokens])
    path, sha = bpe.save_hf_tokenizer(tok, settings.dir("tokenizers"), eos_token=config.special_tokens[0],
                                      pad_token=config.special_tokens[1],
                                      model_max_length=config.model_max_length)
    context.log.info(f"trained BPE on {counted['docs']} documents ({counted['chars']} chars): "
                     f"vocab {tok.get_vocab_size()} -> {path}")
    artifact = TokenizerArtifact(path=str(path), sha256=sha, vocab_size=tok.get_vocab_size(),
                                 eos_token=config.special_tokens[0])
    return dg.Output(artifact, metadata={
        "tokenizer_dir": dg.MetadataValue.path(str(path)),
        "sha256": sha,
        "vocab_size": artifact.vocab_size,
        "training_documents": counted["docs"],
        "training_chars": counted["chars"],
        "data_commit": curated_corpus.commit_id,
        "special_tokens": ", ".join([*config.special_tokens, *config.chat_tokens]),
    })


@dg.asset(group_name="tokens", kinds={"spark", "numpy"})
def token_shards(context: dg.AssetExecutionContext, config: ShardConfig, curated_corpus: CommittedTable,
                 tokenizer: TokenizerArtifact, settings: SettingsResource, spark: SparkResource,
                 lakehouse: LakehouseResource, versioning: VersioningResource) -> dg.Output[ShardSet]:
    """The corpus tokenized, packed into fixed-length sequences and written as checksummed shards."""
    curated_corpus = corpus_for_run(context, curated_corpus, versioning)
    docs = lakehouse.read(spark.session(), curated_corpus.table)
    out_dir = settings.dir("shards") / f"{curated_corpus.commit_id}-{tokenizer.sha256[:8]}"
    result = shards.build_shards(
        docs, tokenizer.path, out_dir, data_commit=curated_corpus.commit_id, seq_len=config.seq_len,
        sequences_per_shard=config.sequences_per_shard, validation_fraction=config.validation_fraction,
        seed=config.seed, eos_token=tokenizer.eos_token,
    )
    m = result.manifest
    tokens = {s: sum(e["tokens"] for e in m["splits"][s]) for s in shards.SPLITS}
    for split, fix in (("train", "lower seq_len or add data"),
                       ("validation", "raise validation_fraction, lower seq_len or add data")):
        if tokens[split] == 0 and (split == "train" or config.validation_fraction > 0):
            raise ValueError(f"curated_corpus {curated_corpus.table.name}@{curated_corpus.table.version} gives no "
                             f"complete {split} sequence of seq_len={config.seq_len} "
                             f"({m['documents'][split]} {split} documents): {fix}")
    context.log.info(f"packed {m['documents']} documents into {tokens} tokens -> {result.path}")
    table = "| split | documents | shards | sequences | tokens |\n|---|---|---|---|---|\n" + "".join(
        f"| {s} | {m['documents'][s]} | {len(m['splits'][s])} | {sum(e['sequences'] for e in m['splits'][s])} "
        f"| {tokens[s]} |\n" for s in shards.SPLITS)
    remote = settings.remote("shards", result.path.name) or ""
    if remote:  # readers elsewhere fetch them from there (local_shards)
        uploaded = shards.publish_shards(result.path, settings.object_store().filesystem(), storage.bucket_path(remote))
        context.log.info(f"published {len(uploaded)} shard files to {remote}")
    artifact = ShardSet(path=str(result.path), manifest_sha256=result.manifest_sha256,
                        data_commit=curated_corpus.commit_id, seq_len=config.seq_len, remote=remote)
    return dg.Output(artifact, metadata={
        "manifest": dg.MetadataValue.path(str(result.path / shards.MANIFEST)),
        **({"remote": remote} if remote else {}),
        "manifest_sha256": result.manifest_sha256,
        "train_tokens": tokens["train"],
        "validation_tokens": tokens["validation"],
        "train_shards": len(m["splits"]["train"]),
        "validation_shards": len(m["splits"]["validation"]),
        "dtype": m["dtype"],
        "seq_len": config.seq_len,
        "data_commit": curated_corpus.commit_id,
        "tokenizer_sha256": tokenizer.sha256,
        "splits": dg.MetadataValue.md(table),
    })
