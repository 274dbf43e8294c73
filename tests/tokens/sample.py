"""Literal test text and a tiny curated_corpus Delta table, as the data stage would commit it."""

from __future__ import annotations

from llm_assets.artifacts import CommittedTable

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Tokenizers split text into pieces; byte-level BPE never meets an unknown character.",
    "Spark reads the curated corpus and writes packed shards of token ids.",
    "DeepSpeed shards optimizer state across processes with ZeRO stage 2.",
    "MLflow records parameters, metrics and the git commit of every training run.",
    "Dagster draws the whole lineage: data commit, tokenizer, shards, checkpoint, model.",
    "Café au lait, naïve résumé, jalapeño — accents survive the round trip.",
    "Emoji too: 🙂🚀✨ and CJK text 漢字かなカナ and Ελληνικά.",
    "Whitespace matters:  two spaces,\ttabs,\nnewlines, and trailing spaces   ",
    "Numbers like 3.14159, 2**16 = 65536 and 1e-3 should decode exactly.",
    "Code: def f(x):\n    return x * 2  # doubled",
    "Punctuation , before a comma and . before a dot stay where they were .",
    "<html><body>Markup is just text to a byte-level tokenizer.</body></html>",
    "The lazy dog sleeps in the sun while the fox runs through the field.",
    "Every checkpoint records the step, optimizer state and the full config.",
    "Resuming after a crash continues from the last saved step, not from zero.",
    "Validation documents are chosen by a stable hash of their id.",
    "Shards are fixed-size binary files of unsigned 16-bit integers.",
    "A manifest lists every shard with its sha256 so corruption is caught early.",
    "The tokenizer directory carries a chat template for the serving endpoint.",
    "Small models train in about a minute on two CPU cores.",
    "Large models are described by configuration only and never downloaded.",
    "The parameter count comes from the configuration, not from a download.",
    "Training cost is roughly six times parameters times tokens in floating point operations.",
    "Serving memory depends on precision: fp32, bf16, int8 or int4.",
    "A license allow-list keeps restricted models out of the default choice.",
    "The export step copies the final weights and registers a model version.",
    "Generation with the exported model produces a few new tokens.",
    "Quotes: \"double\", 'single', `backticks` and «guillemets».",
    "Mixed case: CamelCase, snake_case, kebab-case, SCREAMING_CASE.",
    "URLs such as https://example.org/path?query=1&x=2 are ordinary bytes.",
    "E-mail addresses like someone@example.com appear in package metadata.",
    "Control characters \x00 and \x7f are bytes too.",
    "Long words: antidisestablishmentarianism, pneumonoultramicroscopic.",
    "The rain in Spain stays mainly in the plain.",
    "She sells sea shells by the sea shore.",
    "Peter Piper picked a peck of pickled peppers.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "All work and no play makes Jack a dull boy.",
    "To be, or not to be, that is the question.",
    "It was the best of times, it was the worst of times.",
    "Call me Ishmael. Some years ago, never mind how long precisely.",
    "In the beginning was the word, and the word was tokenized.",
    "Hello, world! Hello, tokenizer! Hello, model!",
    "Right-to-left text: مرحبا بالعالم and שלום עולם.",
    "Zero-width joiner sequences: 👩‍💻 and flags 🇫🇷.",
    "Ends without a newline",
    "\n\nStarts with blank lines",
    "",
]


def corpus_rows(n_docs: int = 200) -> list[tuple[str, str]]:
    """n_docs (doc_id, text) rows built from SENTENCES, each a few sentences long."""
    rows = []
    for i in range(n_docs):
        text = " ".join(SENTENCES[(i * 7 + k) % len(SENTENCES)] for k in range(1 + i % 5))
        rows.append((f"doc-{i:05d}", text))
    return rows


def write_corpus(spark, lakehouse, n_docs: int = 200, partitions: int = 2) -> CommittedTable:
    """Commit a tiny curated_corpus Delta table, the way the data stage hands it over."""
    df = spark.createDataFrame(corpus_rows(n_docs), "doc_id string, text string").repartition(partitions)
    return CommittedTable(lakehouse.write(df, "curated_corpus", "test"), "testcommit")
