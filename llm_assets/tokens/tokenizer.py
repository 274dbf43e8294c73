"""Byte-level BPE tokenizers trained with `tokenizers`, saved as Hugging Face tokenizer directories.

Byte-level BPE with no normalizer and no prefix space decodes every string back exactly: each byte
maps to one visible character before merging, and the ByteLevel decoder maps them back (no `Ġ` in the
output). The directory carries eos/bos/pad and a ChatML-style `chat_template`, which is what
`transformers serve` needs to answer `/v1/chat/completions`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")

# ChatML: one block per message, then an open assistant block when a reply is wanted.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The files a tokenizer directory holds; the trainer copies them next to the model weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
              special_tokens: Iterable[str] = (EOS_TOKEN, PAD_TOKEN, *CHAT_TOKENS)) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts` (any iterable; it is streamed, not held)."""
    special = list(dict.fromkeys(special_tokens))
    if vocab_size < 256 + len(special):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte symbols plus {len(special)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_hf_tokenizer(tok: Tokenizer, root: str | Path, eos_token: str = EOS_TOKEN,
                      pad_token: str = PAD_TOKEN, model_max_length: int = 2048,
                      chat_template: str = CHAT_TEMPLATE) -> tuple[Path, str]:
    """Save `tok` as a Hugging Face tokenizer directory `<root>/<sha256 of tokenizer.json>/`.

    Returns the directory and the sha. The same tokenizer always lands in the same directory, so
    re-running is free and two runs never overwrite each other's files.
    """
    from transformers import PreTrainedTokenizerFast

    for t in (eos_token, pad_token):
        if tok.token_to_id(t) is None:
            raise ValueError(f"special token {t!r} is not in the tokenizer's vocabulary")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos_token, eos_token=eos_token, pad_token=pad_token,
        clean_up_tokenization_spaces=False,  # True would turn "a ." into "a." and break round-trips
        model_max_length=model_max_length,
    )
    hf.chat_template = chat_template
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        # save_jinja_files=False keeps the template inside tokenizer_config.json, where servers look first
        hf.save_pretrained(str(tmp), save_jinja_files=False)
        cfg_path = tmp / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        # The v4 class name: older transformers (and vLLM's pin) cannot resolve "TokenizersBackend".
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        sha = file_sha256(tmp / "tokenizer.json")
        final = root / sha
        if final.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
        return final, sha
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def import_hf_tokenizer(source: str | Path, root: str | Path) -> tuple[Path, str, str]:
    """Copy the tokenizer files of a Hugging Face directory (e.g. a base model's) to `<root>/<sha256>/`.

    Returns the directory, the sha256 of its tokenizer.json, and its EOS token (from
    tokenizer_config.json), which packs documents in the shards.
    """
    source = Path(source).expanduser()
    if not (source / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer local_path {str(source)!r} has no tokenizer.json "
                                "(expected a Hugging Face tokenizer or model directory)")
    config_path = source / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if not eos:
        raise ValueError(f"{config_path} names no eos_token: the shards need one to separate documents")
    if load_tokenizer(source).token_to_id(eos) is None:
        raise ValueError(f"eos_token {eos!r} of {config_path} is not in {source / 'tokenizer.json'}")
    sha = file_sha256(source / "tokenizer.json")
    final = Path(root) / sha
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        tmp.rename(final)
    return final, sha, eos


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The raw `tokenizers.Tokenizer` of a tokenizer directory (or of a tokenizer.json file)."""
    p = Path(path)
    return Tokenizer.from_file(str(p / "tokenizer.json" if p.is_dir() else p))
