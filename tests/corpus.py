"""A tiny real-looking corpus for end-to-end tests: a few documents, a duplicate, PII and bad files."""

from __future__ import annotations

from pathlib import Path

TOPICS = ["license", "install", "usage", "tokenizer", "training", "serving", "monitoring", "datasets"]

SENTENCES = [
    "This project is distributed under the terms of a permissive license that allows reuse.",
    "You can install the package with pip and then import it in your own programs.",
    "The documentation explains each option and gives a short example of its use.",
    "Contributions are welcome: open an issue first to discuss what you would like to change.",
    "Each release is tested on several versions of the interpreter before it is published.",
    "The command line tool reads a configuration file and prints a summary of the results.",
    "A small model can be trained on a laptop in a few minutes with the default settings.",
    "The server answers requests over HTTP and reports its health on a separate path.",
]


def write_corpus(directory: Path, docs: int = 24) -> Path:
    """Markdown documents with real sentences, one exact duplicate, PII, and files that must be quarantined."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        topic = TOPICS[i % len(TOPICS)]
        body = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(6))
        text = f"# Notes on {topic} {i}\n\n{body}\n\nWritten by maintainer{i}@example.org, call 555-010-{1000 + i}.\n"
        (directory / f"doc_{i:03d}.md").write_text(text * 3)
    (directory / "copy_of_doc_000.md").write_text((directory / "doc_000.md").read_text())
    (directory / "empty.txt").write_text("")
    (directory / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (directory / "latin1.txt").write_bytes("Caf\xe9 na\xefve r\xe9sum\xe9 ".encode("latin-1") * 50)
    return directory
