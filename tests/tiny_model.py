"""A tiny Hugging Face GPT-2 model directory for tests, built in-process from literal text (hermetic).

    from tests.tiny_model import build_tiny_model
    model_dir = build_tiny_model(tmp_path / "model", train_steps=60)

The tokenizer is a ByteLevel BPE trained on `TEXT` (with a ByteLevel decoder, bos/eos/pad and a chat
template), so `transformers serve` can decode and chat with it. The model is a 1-layer, 32-wide GPT-2;
`train_steps > 0` fits it a little to the text so generations are not pure noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

TEXT = """\
The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the sun.
A language model predicts the next token from the tokens before it.
Data flows from raw documents to a cleaned corpus, then to token shards and a trained model.
The model is evaluated, quantized and deployed behind a gateway that speaks the OpenAI API.
Monitoring records latency and tokens per second for every request to the endpoint.
user: hello there
assistant: hello, how can I help you today?
user: what is a language model?
assistant: a language model predicts the next token from the tokens before it.
"""


def train_tokenizer(text: str = TEXT, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A ByteLevel BPE tokenizer trained on `text`, wrapped for `save_pretrained`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=None, model_max_length=1024)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def fit(model: GPT2LMHeadModel, ids: torch.Tensor, steps: int, seq_len: int = 32, lr: float = 1e-2) -> float:
    """A few AdamW steps on random windows of `ids`; returns the last loss."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (8,), generator=gen)
        batch = torch.stack([ids[s:s + seq_len] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def build_tiny_model(out_dir: str | Path, train_steps: int = 60, seed: int = 0,
                     text: str = TEXT) -> Path:
    """Write a tiny GPT-2 model directory (safetensors, config, tokenizer with chat template)."""
    out = Path(out_dir).resolve()
    tokenizer = train_tokenizer(text)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    if train_steps:
        ids = torch.tensor(tokenizer.backend_tokenizer.encode(text * 4).ids)
        fit(model, ids, train_steps)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # transformers 5 writes chat_template.jinja; older readers look in tokenizer_config.json.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def token_windows(model_dir: str | Path, n: int = 6, seq_len: int = 32, text: str = TEXT) -> "torch.Tensor":
    """`n` windows of `seq_len` token ids from `text`, like validation shards: int64 [n, seq_len]."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    ids = tokenizer.backend_tokenizer.encode(text * 4).ids
    step = max(1, (len(ids) - seq_len) // n)
    return torch.tensor([ids[i * step:i * step + seq_len] for i in range(n)], dtype=torch.long)
