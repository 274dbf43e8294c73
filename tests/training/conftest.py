import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory):
    """A tokenizer and packed shards for training tests, built without Spark (pack_shards directly)."""
    from llm_assets.tokens import shards
    from llm_assets.tokens import tokenizer as bpe
    from tests.tokens.sample import SENTENCES, corpus_rows

    root = tmp_path_factory.mktemp("tiny_inputs")
    tok = bpe.train_bpe(iter(SENTENCES), vocab_size=512)
    tok_dir, sha = bpe.save_hf_tokenizer(tok, root / "tokenizers")
    eos = tok.token_to_id(bpe.EOS_TOKEN)
    rows = sorted(corpus_rows(300))
    docs = [(shards.assign_split(d, 0.1), np.array(tok.encode(t).ids + [eos])) for d, t in rows]
    docs.sort(key=lambda s: s[0])
    result = shards.pack_shards(docs, root / "shards", seq_len=32, sequences_per_shard=64,
                                vocab_size=tok.get_vocab_size(),
                                header={"tokenizer_sha256": sha, "data_commit": "testcommit", "seed": 0})
    return {"tokenizer_dir": str(tok_dir), "shard_dir": str(result.path), "sha": sha}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A pretrained tiny GPT-2 directory, its own tokenizer imported, and shards packed with it."""
    from llm_assets.tokens import shards
    from llm_assets.tokens import tokenizer as bpe
    from tests.tiny_model import TEXT, build_tiny_model

    root = tmp_path_factory.mktemp("tiny_base")
    model_dir = build_tiny_model(root / "base", train_steps=30)
    tok_dir, sha, eos = bpe.import_hf_tokenizer(model_dir, root / "tokenizers")
    tok = bpe.load_tokenizer(tok_dir)
    eos_id = tok.token_to_id(eos)
    docs = [("train", np.array(tok.encode(line).ids + [eos_id])) for line in TEXT.splitlines() * 20 if line]
    result = shards.pack_shards(docs, root / "shards", seq_len=32, sequences_per_shard=64,
                                vocab_size=tok.get_vocab_size(),
                                header={"tokenizer_sha256": sha, "data_commit": "testcommit", "seed": 0})
    return {"model_dir": str(model_dir), "tokenizer_dir": str(tok_dir), "shard_dir": str(result.path)}
