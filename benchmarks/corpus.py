"""A real text corpus built without a download: the docs and docstrings of the running venv's packages.

Documents, in this order until `docs` are gathered:
1. the package docs that `raw_documents` reads by default (README/METADATA/LICENSE/... files of
   site-packages and /usr/share/doc, `ingest.default_source_files`), markup stripped by kind;
2. docstrings of modules, classes and functions in site-packages' `.py` files (sorted by path,
   parsed with `ast`, never imported) with at least `min_words` whitespace words.

Every text is put through `cleaning.clean_text` before it is written (ftfy, NFC, whitespace), and
the few that a second pass would still change are left out, so cleaning again changes nothing and a
pipeline that does not clean (datatrove) reads the same text as one that does. On this repo's venv
the 30,000 documents are 1,242 package docs and docstrings of 149 top-level packages (45 MB of text). The file is JSONL (`{"id", "text"}`), sorted by (sha256 of the text, the
doc_id `ingest` gives the record): the copy of an exact duplicate that llmops keeps (smallest
content hash, then doc_id) is then the first one in the file, which a first-seen filter keeps, so
the two pipelines' kept sets can be compared by id. Sorting by hash also makes a smaller `--docs N` (the
first N lines of the 30,000, in a file of their own) an unbiased sample. Vendored packages (`_vendor` directories), license files and copied
docstrings give natural exact and near duplicates.

    .venv/bin/python benchmarks/corpus.py --docs 30000     # prints the path of the JSONL file
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import sysconfig
import time
from pathlib import Path
from typing import Iterator

DEFAULT_DOCS = 30_000
ALL_DOCS = 10_000_000  # more than any venv has: every document it gives
MIN_WORDS = 50  # Gopher's min_doc_words: shorter docstrings would only be dropped by it
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def default_cache() -> Path:
    """<LLMOPS_HOME>/bench (default ./.llmops/bench)."""
    from resources.settings import home_from_env

    return Path(home_from_env()) / "bench"


def package_docs() -> Iterator[tuple[str, str]]:
    """(id, text) of the default raw source's files, markup stripped as `clean_documents` would."""
    from llm_assets.data.cleaning import clean_text
    from llm_assets.data.ingest import MAX_BYTES, default_source_files, source_kind

    purelib = sysconfig.get_paths()["purelib"]
    for path in default_source_files():
        data = Path(path).read_bytes()
        if not data or len(data) > MAX_BYTES or b"\x00" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        root = purelib if path.startswith(purelib) else "/usr/share/doc"
        yield "doc:" + os.path.relpath(path, root), clean_text(text, source_kind(path))


def docstrings(min_words: int = MIN_WORDS) -> Iterator[tuple[str, str]]:
    """(id, docstring) of site-packages' modules, classes and functions, files in sorted path order."""
    root = sysconfig.get_paths()["purelib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            try:
                tree = ast.parse(Path(path).read_bytes(), filename=path)
            except (SyntaxError, ValueError):  # py2-only or templated sources some wheels ship
                continue
            rel = os.path.relpath(path, root)
            for node in ast.walk(tree):
                if isinstance(node, _DOC_NODES) and (doc := ast.get_docstring(node)):
                    if len(doc.split()) >= min_words:
                        label = getattr(node, "name", "<module>")
                        yield f"py:{rel}:{getattr(node, 'lineno', 0)}:{label}", doc


def build_corpus(path: Path, docs: int = DEFAULT_DOCS, min_words: int = MIN_WORDS) -> int:
    """Write `docs` documents to `path` (JSONL); returns how many were written (fewer if the venv runs out)."""
    from llm_assets.data.cleaning import clean_text

    rows: dict[str, str] = {}

    def sources() -> Iterator[tuple[str, str]]:
        yield from package_docs()
        for doc_id, text in docstrings(min_words):
            yield doc_id, clean_text(text, "txt")

    for doc_id, text in sources():
        if len(rows) >= docs:
            break
        # Only fixed points of clean_text: cleaning inside the pipeline must not change what it reads.
        if len(text.split()) >= min_words and clean_text(text, "txt") == text:
            rows[doc_id] = text
    write_jsonl(path, rows.items())
    return len(rows)


def write_jsonl(path: Path, rows) -> None:
    """(id, text) rows as JSONL, in the order llmops' exact dedup prefers copies (see the module docstring).

    That order is (content hash, doc_id), and `ingest` derives a JSONL record's doc_id from the file's
    name and the record's id (sha256 of `<name>#<id>\n<content hash>`), so it depends on `path.name`.
    """
    def key(row: tuple[str, str]) -> tuple[str, str]:
        content_hash = hashlib.sha256(row[1].encode()).hexdigest()
        return content_hash, hashlib.sha256(f"{path.name}#{row[0]}\n{content_hash}".encode()).hexdigest()

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as f:
        for doc_id, text in sorted(rows, key=key):
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    partial.replace(path)


def corpus_path(cache: Path, docs: int = DEFAULT_DOCS, min_words: int = MIN_WORDS) -> Path:
    """A corpus of `docs` documents, built on first use.

    The full corpus holds at least DEFAULT_DOCS documents; a smaller `docs` is its first `docs`
    lines (a hash-ordered, so unbiased, sample) in a file of their own, so every reader gets one file.
    """
    size = max(docs, DEFAULT_DOCS)
    full = cache / f"corpus-{size}-min{min_words}.jsonl"
    if not full.exists():
        start = time.monotonic()
        print(f"building {full} from the venv's docs and docstrings ...", file=sys.stderr, flush=True)
        written = build_corpus(full, size, min_words)
        print(f"  {written:,} documents in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    if docs >= size:
        return full
    head = cache / f"corpus-{size}-min{min_words}-first{docs}.jsonl"
    if not head.exists():
        with full.open(encoding="utf-8") as f:
            first = [json.loads(line) for _, line in zip(range(docs), f)]
        write_jsonl(head, [(r["id"], r["text"]) for r in first])
    return head


def corpus_of_mb(cache: Path, mb: float, min_words: int = MIN_WORDS) -> Path:
    """A JSONL corpus of at least `mb` MB of text (UTF-8 bytes of the `text` fields), built on first use.

    Its lines are those of every document the venv gives (`corpus_path(cache, ALL_DOCS)`, in hash order),
    then, while that is short, the same lines again with `#copy<k>` appended to the ids; it ends at the
    first line that reaches the size, so a small `mb` is an unbiased sample of distinct documents.
    """
    target = int(mb * 1e6)
    path = cache / f"text-{mb:g}mb-min{min_words}.jsonl"
    if path.exists():
        return path
    with corpus_path(cache, ALL_DOCS, min_words).open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if not rows:
        raise RuntimeError("the venv gave no documents")
    partial = path.with_suffix(".partial")
    size, copy = 0, 0
    with partial.open("w", encoding="utf-8") as out:
        while size < target:
            for row in rows:
                doc_id = f"{row['id']}#copy{copy}" if copy else row["id"]
                out.write(json.dumps({"id": doc_id, "text": row["text"]}, ensure_ascii=False) + "\n")
                size += len(row["text"].encode())
                if size >= target:
                    break
            copy += 1
    partial.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS)
    parser.add_argument("--min-words", type=int, default=MIN_WORDS)
    parser.add_argument("--cache", type=Path, default=None, help="default: <LLMOPS_HOME>/bench")
    args = parser.parse_args()
    print(corpus_path(args.cache or default_cache(), args.docs, args.min_words))


if __name__ == "__main__":
    main()
