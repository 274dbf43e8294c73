"""RAG answers and their grades: the model answers from retrieved passages; ragas and a token-overlap check grade them.

- Answers: a plain completion prompt ("Context: ... Question: ... Answer:") to the model's OpenAI-compatible
  `/v1/completions`, greedy, `max_tokens` new tokens. Passages are cut, in rank order, so that prompt and
  answer fit the model's context window; the judge and the hallucination check see them as the model did.
- Judge-free ragas metrics (offline): non-LLM context precision and recall (retrieved passages against the
  gold one, Levenshtein similarity >= 0.5 is a match), answer similarity (Levenshtein, answer against the
  unmasked sentence) and keyword presence (the masked word occurs in the answer).
- LLM-judged ragas metrics: faithfulness and answer relevancy (MiniLM embeddings) from any
  OpenAI-compatible judge. A failed call (down, HTTP error, unparseable output, no score) leaves its
  sample unjudged with the reason; with fewer than half the samples judged the metric is
  {"missing": reason}, never 0. After `max_failures` failures without a success the judge is given up on.
- Hallucination (NLI-free): each answer sentence is a claim, unsupported when fewer than
  `support_threshold` of its content tokens (words and numbers, lower-cased, minus English stop words)
  occur in the passages shown. The rate is unsupported claims / claims, with a bootstrap interval over
  answers (the claims of one answer are not independent).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

from llm_assets.evaluation.rag import Question, RetrievalResult, bootstrap_ci95, embed, mean_result, rate_result, words

os.environ["RAGAS_DO_NOT_TRACK"] = "true"  # ragas posts usage events to its servers otherwise

PROMPT_MARGIN = 4
"""Tokens kept free in the context window, for special tokens and re-tokenization differences."""
_CLAIM_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class RagSample:
    question: Question
    contexts: list[str]
    """The retrieved passages, in rank order."""
    shown: list[str] = field(default_factory=list)
    """The passages as they appear in the prompt (cut to the context window)."""
    prompt: str = ""
    answer: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Judge:
    """An OpenAI-compatible endpoint that grades answers (base URL with or without /v1)."""

    url: str
    model: str
    api_key: str = ""
    timeout_s: float = 60.0
    max_failures: int = 3
    note: str = ""
    """Said in every failure reason, e.g. that the judge is the evaluated model itself."""

    @property
    def base_url(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/v1") else f"{url}/v1"


# ---------------------------------------------------------------- prompts and answers

def context_window(model_dir: str) -> int:
    """The model's maximum sequence length from its config.json."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    window = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if not window:
        raise ValueError(f"{model_dir}/config.json gives no max_position_embeddings or n_positions")
    return int(window)


def build_prompt(question: str, passages: Sequence[str], tokenizer, budget: int) -> tuple[str, list[str]]:
    """The completion prompt within `budget` tokens and the passage texts it shows (empty: no room for any)."""
    head, tail = "Context: ", f"Question: {question}\nAnswer:"
    room = budget - len(tokenizer(head + tail)["input_ids"])
    shown = []
    for passage in passages:
        if room <= 0:
            break
        ids = tokenizer(passage + "\n", add_special_tokens=False)["input_ids"][:room]
        shown.append(tokenizer.decode(ids).strip())
        room -= len(ids)
    return head + "".join(f"{p}\n" for p in shown) + tail, [p for p in shown if p]


def complete(url: str, model: str, prompt: str, max_tokens: int, timeout_s: float) -> str:
    """One greedy completion from `url`/v1/completions; raises naming the URL on failure."""
    resp = httpx.post(f"{url.rstrip('/')}/v1/completions", timeout=timeout_s,
                      json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    if resp.status_code != 200:
        raise RuntimeError(f"completion at {url} failed: HTTP {resp.status_code} {resp.text[:300]}")
    return resp.json()["choices"][0]["text"]


def prepare_samples(retrieval: RetrievalResult, n: int, context_passages: int, tokenizer,
                    budget: int) -> list[RagSample]:
    """The first `n` retrieval questions with their top passages and prompts within `budget` tokens."""
    samples = []
    for q, hits in list(zip(retrieval.questions, retrieval.hits))[:n]:
        s = RagSample(q, [h["text"] for h in hits[:context_passages]])
        s.prompt, s.shown = build_prompt(q.question, s.contexts, tokenizer, budget)
        if not s.shown:
            s.error = f"the question leaves no room for context in {budget} prompt tokens"
        samples.append(s)
    return samples


def generate_answers(samples: Sequence[RagSample], url: str, model: str, max_tokens: int,
                     timeout_s: float) -> None:
    """Fill each sample's answer, or its error when the endpoint fails for it."""
    for s in samples:
        if s.error is None:
            try:
                s.answer = complete(url, model, s.prompt, max_tokens, timeout_s).strip()
            except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as e:
                s.error = f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- hallucination

def claim_tokens(text: str) -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in (t.lower() for t in words(text)) if w not in ENGLISH_STOP_WORDS]


def unsupported_claims(answer: str, passages: Sequence[str], support_threshold: float = 0.5) -> tuple[int, int]:
    """(claims, unsupported claims) of `answer` against `passages`, by content-token overlap."""
    support = set(claim_tokens(" ".join(passages)))
    claims = [toks for toks in (claim_tokens(c) for c in _CLAIM_SPLIT.split(answer)) if toks]
    unsupported = sum(sum(t in support for t in toks) / len(toks) < support_threshold for toks in claims)
    return len(claims), unsupported


def unsupported_claim_rate(answers: Sequence[str], passages: Sequence[Sequence[str]],
                           support_threshold: float = 0.5, seed: int = 0) -> dict:
    """Unsupported claims / claims over all answers, with a bootstrap interval over answers."""
    counts = np.array([unsupported_claims(a, p, support_threshold) for a, p in zip(answers, passages)],
                      dtype=float).reshape(-1, 2)
    with_claims = counts[counts[:, 0] > 0]
    if len(with_claims) == 0:
        return {"missing": f"none of the {len(answers)} answers makes a claim (no content words)"}
    claims, unsupported = with_claims.sum(axis=0)
    return {"value": float(unsupported / claims), "n": len(with_claims), "claims": int(claims),
            "unsupported": int(unsupported),
            "ci95": bootstrap_ci95(with_claims, lambda a: a[:, 1].sum() / a[:, 0].sum(), seed=seed)}


# ---------------------------------------------------------------- ragas

def judge_free_metrics(samples: Sequence[RagSample], seed: int = 0) -> dict:
    """ragas non-LLM context precision/recall, answer similarity and keyword presence."""
    from ragas.dataset_schema import SingleTurnSample
    from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
    from ragas.metrics._context_recall import NonLLMContextRecall
    from ragas.metrics.collections import NonLLMStringSimilarity, StringPresence

    async def run() -> dict:
        precision, recall = NonLLMContextPrecisionWithReference(), NonLLMContextRecall()
        similarity, presence = NonLLMStringSimilarity(), StringPresence()
        p, r, sim, present = [], [], [], 0
        for s in samples:
            row = SingleTurnSample(retrieved_contexts=s.contexts, reference_contexts=[s.question.passage])
            p.append(await precision.single_turn_ascore(row))
            r.append(await recall.single_turn_ascore(row))
        answered = [s for s in samples if s.answer is not None]
        for s in answered:
            sim.append((await similarity.ascore(reference=s.question.sentence, response=s.answer)).value)
            present += (await presence.ascore(reference=s.question.target, response=s.answer.lower())).value
        out = {"context_precision": mean_result(p, seed), "context_recall": mean_result(r, seed)}
        if answered:
            out["answer_similarity"] = mean_result(sim, seed)
            out["answer_keyword_presence"] = rate_result(int(present), len(answered))
        else:
            reason = {"missing": f"no answers: {no_answer_reason(samples)}"}
            out["answer_similarity"] = out["answer_keyword_presence"] = reason
        return out

    return asyncio.run(run())


def _minilm_embeddings():
    """The packaged MiniLM as a ragas embedding (for answer relevancy)."""
    from ragas.embeddings.base import BaseRagasEmbedding

    class MiniLM(BaseRagasEmbedding):
        def embed_text(self, text: str, **kwargs) -> list[float]:
            return embed([text])[0].tolist()

        async def aembed_text(self, text: str, **kwargs) -> list[float]:
            return self.embed_text(text)

    return MiniLM()


async def _judge_each(samples: Sequence[RagSample], score: Callable[[RagSample], Awaitable], judge: Judge,
                      seed: int) -> dict:
    values, errors = [], []
    for s in samples:
        try:
            value = (await score(s)).value
            if value is None or not math.isfinite(value):
                raise ValueError(f"the judge's answers gave no score ({value!r})")
            values.append(float(value))
        except Exception as e:  # any failure of the judge leaves the sample unjudged, with its reason
            errors.append(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            if not values and len(errors) >= judge.max_failures:
                break
    tried = len(values) + len(errors)
    if 2 * len(values) < len(samples):
        gave_up = f", gave up after {tried} of {len(samples)}" if tried < len(samples) else ""
        note = f"; {judge.note}" if judge.note else ""
        return {"missing": f"judge {judge.base_url} (model {judge.model}{note}) failed on {len(errors)} of "
                           f"{tried} samples tried{gave_up}: {errors[0] if errors else 'no samples'}"}
    result = mean_result(values, seed)
    return {**result, "failed": len(errors), "errors": errors[:3]} if errors else result


def judged_metrics(samples: Sequence[RagSample], judge: Judge, seed: int = 0) -> dict:
    """ragas faithfulness (against the passages shown) and answer relevancy, graded by `judge`."""
    answered = [s for s in samples if s.answer]
    if not answered:
        reason = {"missing": f"no non-empty answers to judge: {no_answer_reason(samples)}"}
        return {"faithfulness": reason, "answer_relevancy": reason}

    async def run() -> dict:
        from openai import AsyncOpenAI
        from ragas.llms import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, Faithfulness

        client = AsyncOpenAI(base_url=judge.base_url, api_key=judge.api_key or "none", timeout=judge.timeout_s,
                             max_retries=0)
        llm = llm_factory(judge.model, client=client, max_retries=1)
        faithfulness, relevancy = Faithfulness(llm=llm), AnswerRelevancy(llm=llm, embeddings=_minilm_embeddings())
        try:
            return {
                "faithfulness": await _judge_each(answered, lambda s: faithfulness.ascore(
                    user_input=s.question.question, response=s.answer, retrieved_contexts=s.shown), judge, seed),
                "answer_relevancy": await _judge_each(answered, lambda s: relevancy.ascore(
                    user_input=s.question.question, response=s.answer), judge, seed),
            }
        finally:
            await client.close()

    return asyncio.run(run())


def no_answer_reason(samples: Sequence[RagSample]) -> str:
    errors = [s.error for s in samples if s.error]
    if errors:
        return f"{len(errors)} of {len(samples)} failed, first: {errors[0]}"
    return f"all {len(samples)} answers are empty" if samples else "no questions"


# ---------------------------------------------------------------- all together

ANSWER_METRICS = ("answer_similarity", "answer_keyword_presence", "unsupported_claim_rate", "faithfulness",
                  "answer_relevancy")


def unanswered(reason: str) -> dict:
    """`evaluate_answers`' result when no answer can be asked for: every answer metric missing with `reason`."""
    return {"metrics": {m: {"missing": reason} for m in ANSWER_METRICS},
            "samples": {"questions": 0, "answered": 0, "failed": 0}, "records": []}


def evaluate_answers(retrieval: RetrievalResult, model_dir: str, url: str, model: str, judge: Judge, *,
                     questions: int = 16, context_passages: int = 2, max_tokens: int = 32,
                     support_threshold: float = 0.5, timeout_s: float = 120.0, seed: int = 0) -> dict:
    """Answers from the model at `url` to the first `questions` retrieval questions, and every answer metric."""
    from transformers import AutoTokenizer

    budget = context_window(model_dir) - max_tokens - PROMPT_MARGIN
    samples = prepare_samples(retrieval, questions, context_passages, AutoTokenizer.from_pretrained(model_dir),
                              budget)
    generate_answers(samples, url, model, max_tokens, timeout_s)
    answered = [s for s in samples if s.answer is not None]
    hallucination = (unsupported_claim_rate([s.answer for s in answered], [s.shown for s in answered],
                                            support_threshold, seed)
                     if answered else {"missing": f"no answers: {no_answer_reason(samples)}"})
    return {
        "metrics": {**judge_free_metrics(samples, seed), "unsupported_claim_rate": hallucination,
                    **judged_metrics(samples, judge, seed)},
        "samples": {"questions": len(samples), "answered": len(answered),
                    "failed": sum(s.error is not None for s in samples), "prompt_tokens_budget": budget},
        "records": [{**asdict(s.question), "contexts": s.contexts, "shown": s.shown, "answer": s.answer,
                     "error": s.error} for s in samples],
    }


def examples_markdown(records: Sequence[dict], ranks: Sequence[int | None], n: int = 5) -> str:
    """The first `n` questions: gold word, rank of the gold passage, the model's answer or its error."""
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "/")[:160]

    rows = [f"| {cell(r['question'])} | {r['target']} | {rank or '-'} | "
            f"{cell(repr(r['answer']) if r['answer'] is not None else 'error: ' + str(r['error']))} |"
            for r, rank in zip(records[:n], ranks)]
    return "| question | gold word | gold rank | model answer |\n|---|---|---:|---|\n" + "\n".join(rows)
