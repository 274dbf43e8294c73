"""For the RAG tests: a tiny GPT-2 with a 512-token window, and a scripted OpenAI-compatible judge on 127.0.0.1.

The scripted judge is a fake (no language model can run here as a judge): it answers ragas' structured
prompts with fixed JSON (`mode="scripted"`) or with prose that is not JSON (`mode="garbage"`), and counts
the requests it got.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.tiny_model import TEXT, fit, train_tokenizer
from tests.tokens.sample import SENTENCES

STATEMENT = "The fox is quick."


def build_wide_tiny_model(out_dir: Path, train_steps: int = 40) -> Path:
    """Like tests.tiny_model.build_tiny_model, with a 512-token window and a tokenizer that knows the test corpus,
    so prompts with retrieved passages fit."""
    text = TEXT + "\n".join(SENTENCES) + "\nContext: Question: Fill in the blank: Answer:\n"
    tokenizer = train_tokenizer(text, vocab_size=1024)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    fit(model, torch.tensor(tokenizer.backend_tokenizer.encode(text * 4).ids), train_steps)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir).resolve()


def _scripted_reply(system: str, question: str) -> dict:
    """The JSON ragas expects, chosen by the schema title instructor puts in the system message."""
    if '"title": "NLIStatementOutput"' in system:
        return {"statements": [{"statement": STATEMENT, "reason": "the context says so", "verdict": 1}]}
    if '"title": "AnswerRelevanceOutput"' in system:
        return {"question": question, "noncommittal": 0}
    return {"statements": [STATEMENT]}


@contextlib.contextmanager
def judge_server(mode: str, question: str = "") -> Iterator[dict]:
    """An OpenAI-compatible /v1/chat/completions on a free port; yields {"url", "requests"}."""
    state = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"] += 1
            system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
            content = (json.dumps(_scripted_reply(system, question)) if mode == "scripted"
                       else "Sure! The answer looks fine to me.")
            reply = json.dumps({
                "id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
        yield state
    finally:
        server.shutdown()
        server.server_close()
