import json

from transformers import AutoTokenizer

from llm_assets.tokens import tokenizer as bpe
from tests.tokens.sample import SENTENCES


def train(tmp_path, vocab_size=600):
    tok = bpe.train_bpe(iter(SENTENCES), vocab_size=vocab_size, min_frequency=2)
    return bpe.save_hf_tokenizer(tok, tmp_path / "tokenizers")


def test_round_trip_decodes_exactly_without_byte_markers(tmp_path):
    path, sha = train(tmp_path)
    assert path.name == sha == bpe.file_sha256(path / "tokenizer.json")
    hf = AutoTokenizer.from_pretrained(str(path))
    raw = bpe.load_tokenizer(path)
    unseen = "Unseen text: Zürich 🦀 ångström — ﬁ ligature, tabs\t\tand   spaces.\n"
    for text in [*SENTENCES, unseen]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert hf.decode(ids) == text
        assert raw.decode(raw.encode(text).ids) == text
        assert "Ġ" not in hf.decode(ids)
    assert len(hf(SENTENCES[1])["input_ids"]) < len(SENTENCES[1].encode())  # merges were learned


def test_special_tokens_and_chat_template(tmp_path):
    path, _ = train(tmp_path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert "im_start" in cfg["chat_template"]
    hf = AutoTokenizer.from_pretrained(str(path))
    assert hf.eos_token == hf.bos_token == "<|endoftext|>" and hf.pad_token == "<|pad|>"
    assert hf.eos_token_id != hf.pad_token_id
    chat = hf.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False,
                                  add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    ids = hf(chat, add_special_tokens=False)["input_ids"]
    assert hf.convert_tokens_to_ids("<|im_start|>") in ids  # chat markers are single tokens
    assert hf.decode(ids) == chat


def test_same_text_same_tokenizer_directory(tmp_path):
    a, sha_a = train(tmp_path / "a")
    b, sha_b = train(tmp_path / "b")
    assert sha_a == sha_b
    c, sha_c = train(tmp_path / "a", vocab_size=500)
    assert sha_c != sha_a and c != a
