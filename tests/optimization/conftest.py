import numpy as np
import pytest


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A tiny trained GPT-2 (the teacher / original), its own tokenizer imported, and train + validation shards."""
    from llm_assets.artifacts import ExportedModel, ShardSet, TokenizerArtifact
    from llm_assets.tokens import shards
    from llm_assets.tokens import tokenizer as bpe
    from tests.tiny_model import TEXT, build_tiny_model

    root = tmp_path_factory.mktemp("teacher")
    model_dir = build_tiny_model(root / "model", train_steps=60)
    tok_dir, sha, eos = bpe.import_hf_tokenizer(model_dir, root / "tokenizers")
    tok = bpe.load_tokenizer(tok_dir)
    lines = [line for line in TEXT.splitlines() * 20 if line]
    docs = [("validation" if i % 5 == 0 else "train", np.array(tok.encode(line).ids + [tok.token_to_id(eos)]))
            for i, line in enumerate(lines)]
    docs.sort(key=lambda d: d[0])
    result = shards.pack_shards(docs, root / "shards", seq_len=32, sequences_per_shard=64,
                                vocab_size=tok.get_vocab_size(),
                                header={"tokenizer_sha256": sha, "data_commit": "testcommit", "seed": 0})
    return {"model": ExportedModel(path=str(model_dir), registered_name="tiny", version="1", mlflow_run_id="",
                                   data_commit="testcommit"),
            "shards": ShardSet(path=str(result.path), manifest_sha256="0" * 64, data_commit="testcommit", seq_len=32),
            "tokenizer": TokenizerArtifact(path=str(tok_dir), sha256=sha, vocab_size=tok.get_vocab_size())}
