"""RAG on real components: MiniLM embeddings, LanceDB on disk, ragas, Spark/Delta, a tiny model behind
`transformers serve`. The only fake is the scripted judge (tests/evaluation/rag_fixtures.py)."""

import json
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from llm_assets.artifacts import CommittedTable, ExportedModel
from llm_assets.deployment.processes import free_port
from llm_assets.evaluation import rag, rag_answers
from llm_assets.evaluation.assets import rag_eval, rag_index
from tests.evaluation.rag_fixtures import STATEMENT, build_wide_tiny_model, judge_server
from tests.tokens.sample import corpus_rows, write_corpus

DOCS = corpus_rows(200)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    passages, total, documents = rag.chunk_corpus(DOCS, passage_words=100, max_passages=600)
    return rag.build_index(passages, tmp_path_factory.mktemp("vector"), "commit-a", passages_total=total,
                           documents=documents, passage_words=100)


@pytest.fixture(scope="module")
def retrieval(index):
    return rag.evaluate_retrieval(rag.open_index(index), questions=40, ks=(1, 5, 10))


def sample(answer: str) -> rag_answers.RagSample:
    passage = "The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the sun."
    q = rag.Question("Fill in the blank: The quick _____ fox jumps over the lazy dog.", "brown",
                     "The quick brown fox jumps over the lazy dog.", "doc:0", passage, rag.text_hash(passage))
    return rag_answers.RagSample(q, [passage, "Spark reads the curated corpus."], shown=[passage], answer=answer)


def test_chunks_respect_the_word_limit_and_the_cap_does_not_depend_on_order():
    passages = rag.chunk_document("d", "One two three four five six. " * 10 + "Seven eight nine ten eleven.", 14)
    assert [p.id for p in passages] == ["d:0", "d:1", "d:2", "d:3", "d:4", "d:5"]
    assert all(len(p.text.split()) <= 14 for p in passages)
    assert rag.chunk_document("d", "Too short.", 14) == []

    capped, total, documents = rag.chunk_corpus(DOCS, passage_words=8, max_passages=50)
    assert documents == 200 and total > 50 and len(capped) == 50
    assert rag.chunk_corpus(DOCS[::-1], passage_words=8, max_passages=50)[0] == capped
    assert rag.chunk_corpus(DOCS, passage_words=8, max_passages=50, seed=1)[0] != capped
    with pytest.raises(ValueError, match="passage_words"):
        rag.chunk_corpus(DOCS, passage_words=2)


def test_each_index_version_records_its_data_commit(tmp_path):
    first_passages, total, docs = rag.chunk_corpus(DOCS[:20], 100, 600)
    first = rag.build_index(first_passages, tmp_path, "commit-a", passages_total=total, documents=docs,
                            passage_words=100)
    second_passages, total, docs = rag.chunk_corpus(DOCS[20:60], 100, 600)
    second = rag.build_index(second_passages, tmp_path, "commit-b", passages_total=total, documents=docs,
                             passage_words=100)
    assert second.version > first.version and (first.data_commit, second.data_commit) == ("commit-a", "commit-b")
    # the older version stays readable as it was built, and says which commit it came from
    assert rag.recorded_commit(first) == "commit-a" and rag.recorded_commit(second) == "commit-b"
    assert rag.open_index(first).count_rows() == first.rows == len(first_passages)
    assert rag.open_index(second).count_rows() == len(second_passages)
    tags = rag.open_index(second).tags.list()
    assert tags["data-commit-a"]["version"] == first.version and tags["data-commit-b"]["version"] == second.version
    again = rag.build_index(first_passages, tmp_path, "commit-a", passages_total=total, documents=docs,
                            passage_words=100)
    assert rag.open_index(again).tags.list()["data-commit-a"]["version"] == again.version > second.version


def test_a_new_data_commit_embeds_only_new_and_changed_passages(tmp_path):
    passages = [rag.Passage(f"d{i}:0", f"d{i}", f"Passage number {i} talks about topic {i} at some length.")
                for i in range(4)]
    first = rag.build_index(passages, tmp_path, "commit-a", passages_total=4, documents=4, passage_words=100)
    assert first.changes == {"embedded": 4, "reused": 0, "removed": 0}
    changed = rag.Passage("d1:0", "d1", "Passage one was rewritten and now talks about something else.")
    new = rag.Passage("d9:0", "d9", "A brand new document arrived with this data commit today.")
    second = rag.build_index([passages[0], changed, passages[2], new], tmp_path, "commit-b", passages_total=4,
                             documents=4, passage_words=100)
    assert second.changes == {"embedded": 2, "reused": 2, "removed": 2}  # d1's old text and d3 are gone
    rows = {r["id"]: r for r in rag.open_index(second).to_arrow().to_pylist()}
    assert set(rows) == {"d0:0", "d1:0", "d2:0", "d9:0"} and rows["d1:0"]["text"] == changed.text
    old = {r["id"]: r for r in rag.open_index(first).to_arrow().to_pylist()}
    assert rows["d0:0"]["vector"] == old["d0:0"]["vector"]  # reused, not re-embedded
    assert rows["d9:0"]["vector"] == pytest.approx(rag.embed([new.text])[0].tolist(), abs=1e-5)


def test_questions_mask_a_word_of_their_passage_and_are_seeded(index):
    passages = rag.read_passages(rag.open_index(index))
    questions = rag.make_questions(passages, 20)
    assert len(questions) == 20 and len({q.passage_hash for q in questions}) == 20
    for q in questions:
        assert rag.BLANK in q.question and q.sentence in q.passage
        assert q.target in q.sentence.lower() and q.target not in q.question.lower()
    assert rag.make_questions(passages, 20) == questions
    assert rag.make_questions(passages, 20, seed=1) != questions


def test_a_question_retrieves_its_own_passage_well_above_chance(retrieval, index):
    m = retrieval.metrics
    assert m["recall_at_5"]["n"] == len(retrieval.questions) == 40
    assert m["recall_at_1"]["chance"] == pytest.approx(1 / index.rows)
    assert m["recall_at_5"]["value"] >= 0.5 and m["recall_at_5"]["value"] > 10 * m["recall_at_5"]["chance"]
    assert m["recall_at_1"]["value"] <= m["recall_at_5"]["value"] <= m["recall_at_10"]["value"]
    assert m["mrr"]["value"] >= m["recall_at_1"]["value"]
    for entry in m.values():
        lo, hi = entry["ci95"]
        assert 0 <= lo <= entry["value"] <= hi <= 1


def test_unrelated_text_has_a_higher_unsupported_claim_rate_than_copied_text():
    passage = ["The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the sun."]
    copied = "The lazy dog sleeps in the sun. The quick brown fox jumps."
    unrelated = "Quantum chromodynamics describes gluons. Mortgage rates rose sharply in March."
    assert rag_answers.unsupported_claims(copied, passage) == (2, 0)
    assert rag_answers.unsupported_claims(unrelated, passage) == (2, 2)
    assert rag_answers.unsupported_claims("The fox sleeps. Mortgage rates rose.", passage) == (2, 1)
    low = rag_answers.unsupported_claim_rate([copied] * 4, [passage] * 4)
    high = rag_answers.unsupported_claim_rate([unrelated] * 4, [passage] * 4)
    assert low["value"] < high["value"] and (low["value"], high["value"]) == (0.0, 1.0)
    assert high["n"] == 4 and high["claims"] == 8
    assert "missing" in rag_answers.unsupported_claim_rate(["", "  the of and"], [passage] * 2)


def test_a_dead_judge_is_missing_with_its_url_and_judge_free_metrics_remain():
    samples = [sample("The quick brown fox."), sample("brown")]
    dead = f"http://127.0.0.1:{free_port()}"
    judged = rag_answers.judged_metrics(samples, rag_answers.Judge(dead, "judge", timeout_s=5))
    for name in ("faithfulness", "answer_relevancy"):
        assert set(judged[name]) == {"missing"}
        assert dead in judged[name]["missing"] and "Connection" in judged[name]["missing"]
    free = rag_answers.judge_free_metrics(samples)
    assert free["context_recall"]["value"] == 1.0
    assert free["context_precision"]["value"] == pytest.approx(1.0)  # the gold passage ranks first
    assert free["answer_keyword_presence"]["value"] == 1.0 and free["answer_keyword_presence"]["n"] == 2
    assert 0 < free["answer_similarity"]["value"] < 1


def test_a_judge_answering_garbage_is_missing_and_given_up_on():
    samples = [sample("The quick brown fox.") for _ in range(6)]
    with judge_server("garbage") as judge:
        judged = rag_answers.judged_metrics(samples, rag_answers.Judge(judge["url"], "judge", max_failures=3))
    assert judge["url"] in judged["faithfulness"]["missing"]
    assert "gave up after 3 of 6" in judged["faithfulness"]["missing"] and "json" in judged["faithfulness"]["missing"]
    assert judge["requests"] == 6  # 3 per metric, one attempt each, then it stops asking


def test_scripted_judge_scores_flow_into_the_metrics():
    samples = [sample(STATEMENT), sample(STATEMENT)]
    with judge_server("scripted", question=samples[0].question.question) as judge:
        judged = rag_answers.judged_metrics(samples, rag_answers.Judge(judge["url"], "judge"))
    assert judged["faithfulness"] == {"value": 1.0, "n": 2, "ci95": [1.0, 1.0]}
    assert judged["answer_relevancy"]["value"] == pytest.approx(1.0, abs=1e-5)  # same question, same embedding


def test_prompts_fit_the_context_window(retrieval, tmp_path):
    from transformers import AutoTokenizer

    model_dir = build_wide_tiny_model(tmp_path / "model", train_steps=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = rag_answers.prepare_samples(retrieval, 10, 2, tokenizer, budget=60)
    for s in samples:
        if s.error is None:
            assert len(tokenizer(s.prompt)["input_ids"]) <= 60 + rag_answers.PROMPT_MARGIN
            assert s.prompt.endswith(f"Question: {s.question.question}\nAnswer:") and s.shown
        else:
            assert "no room for context" in s.error and not s.shown
    assert any(s.error is None for s in samples)


def test_rag_assets_on_a_committed_corpus_and_a_served_model(llmops_resources, spark, tmp_path):
    table = write_corpus(spark, llmops_resources["lakehouse"], n_docs=200)
    model_dir = build_wide_tiny_model(tmp_path / "model")
    tracking = llmops_resources["tracking"]
    run_id = tracking.start_run("rag-test", {})

    @dg.asset(name="curated_corpus", group_name="data")
    def curated_corpus() -> CommittedTable:
        return table

    @dg.asset(name="exported_model", group_name="training")
    def exported_model() -> ExportedModel:
        return ExportedModel(path=str(model_dir), registered_name="tiny", version="1", mlflow_run_id=run_id,
                             data_commit="testcommit")

    dead = f"http://127.0.0.1:{free_port()}"
    config = {"retrieval_questions": 30, "rag_questions": 4, "max_tokens": 8, "judge_url": dead,
              "judge_model": "judge", "judge_timeout_s": 5}
    result = dg.materialize([curated_corpus, exported_model, rag_index, rag_eval], resources=llmops_resources,
                            run_config={"ops": {"rag_index": {"config": {"max_passages": 120}},
                                                "rag_eval": {"config": config}}})
    assert result.success

    index = result.output_for_node("rag_index")
    meta = result.asset_materializations_for_node("rag_index")[0].metadata
    assert index.data_commit == "testcommit" == meta["data_commit"].value == rag.recorded_commit(index)
    assert index.rows == 120 == meta["rows"].value and meta["capped"].value
    assert "indexed 120 of" in meta["cap"].value and meta["probe_search_ms"].value > 0

    report = result.output_for_node("rag_eval")
    metrics = report["metrics"]
    assert metrics["recall_at_5"]["n"] == 30 and metrics["recall_at_5"]["value"] > 10 * metrics["recall_at_5"]["chance"]
    assert metrics["context_recall"]["n"] == 4 and "value" in metrics["context_precision"]
    for name, entry in metrics.items():  # every metric is a value with n and an interval, or missing with a reason
        assert ("value" in entry and "n" in entry and "ci95" in entry) or entry["missing"], name
    assert report["samples"]["questions"] == 4
    records = json.loads(Path(report["report_path"]).read_text())["records"]
    answered = [r for r in records if r["answer"]]
    if answered:  # a judge is asked only about non-empty answers
        assert dead in metrics["faithfulness"]["missing"]
    else:
        assert "no non-empty answers" in metrics["faithfulness"]["missing"]

    run = MlflowClient(tracking.tracking_uri).get_run(run_id)
    assert run.data.metrics["rag_recall_at_5"] == pytest.approx(metrics["recall_at_5"]["value"])
    assert "rag_faithfulness" not in run.data.metrics
    eval_meta = result.asset_materializations_for_node("rag_eval")[0].metadata
    assert "faithfulness" in eval_meta["missing"].value and "| recall_at_5 |" in eval_meta["metrics"].value
