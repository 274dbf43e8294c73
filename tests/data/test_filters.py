"""Quality filters: each named rule on short literal texts (as datatrove's filter tests do), numbers
checked by hand, and the Spark step's kept rows, quarantine and drop statistics."""

import pytest

from llm_assets.data import filters
from llm_assets.data.filters import (C4Rules, FilterConfig, FineWebRules, GopherQualityRules, GopherRepetitionRules,
                                     c4_filter_lines, count_sentences, duplicated_ngram_chars, filter_document,
                                     find_duplicates, fineweb_quality, gopher_quality, gopher_repetition,
                                     split_words, top_ngram_chars)
from llm_assets.data.ingest import QUARANTINE_COLUMNS

# Six sentences, one a line, every line over 30 characters: passes every filter at the papers' defaults.
LINES = [
    "The river runs through the valley and feeds the old mill at the edge of town.",
    "Farmers bring their grain there each autumn, and the miller grinds it into flour.",
    "Children watch the wheel turn while their parents trade news about the coming winter.",
    "In spring the water rises quickly, so the miller keeps sandbags stacked by the door.",
    "Travelers often stop to rest on the stone bridge and admire the quiet landscape.",
    "Nobody remembers exactly who built the mill, but everyone agrees it should stay standing.",
]
GOOD = "\n".join(LINES)
NO_STOP_WORDS = " ".join(["river valley mill grain flour wheel winter spring water bridge"] * 6)


def rule(verdict):
    return verdict[0] if verdict else None


def test_good_text_passes_every_filter():
    assert gopher_quality(GOOD) is None
    assert gopher_repetition(GOOD) is None
    assert c4_filter_lines(GOOD) == (GOOD, None)
    assert fineweb_quality(GOOD) is None
    assert filter_document(GOOD) == (GOOD, None)


# ---------------------------------------------------------------- Gopher quality

@pytest.mark.parametrize("text, rules, expected", [
    ("Too short to keep.", GopherQualityRules(), "gopher_short_doc"),
    (GOOD, GopherQualityRules(max_doc_words=60), "gopher_long_doc"),
    (" ".join(["an ox is up"] * 15), GopherQualityRules(), "gopher_below_avg_threshold"),
    (" ".join(["internationalization"] * 60), GopherQualityRules(), "gopher_above_avg_threshold"),
    (GOOD + "\n" + "#" * 20, GopherQualityRules(), "gopher_too_many_hashes"),
    (" ".join(w + "..." for w in GOOD.split()), GopherQualityRules(), "gopher_too_many_ellipsis"),
    ("\n".join("- " + line for line in LINES), GopherQualityRules(), "gopher_too_many_bullets"),
    ("\n".join("• " + line for line in LINES), GopherQualityRules(), "gopher_too_many_bullets"),
    ("\n".join(line[:-1] + "..." if i % 2 else line for i, line in enumerate(LINES)), GopherQualityRules(),
     "gopher_too_many_end_ellipsis"),
    (GOOD + "\n" + " ".join(str(1000 + i) for i in range(200)), GopherQualityRules(), "gopher_below_alpha_threshold"),
    (NO_STOP_WORDS, GopherQualityRules(), "gopher_enough_stop_words"),
    ("The " + NO_STOP_WORDS + " With", GopherQualityRules(), "gopher_enough_stop_words"),  # case-sensitive
    ("the " + NO_STOP_WORDS + " with", GopherQualityRules(), None),
    (NO_STOP_WORDS, GopherQualityRules(min_stop_words=None), None),
    ("Short enough to keep the text.", GopherQualityRules(min_doc_words=3), None),
])
def test_gopher_quality(text, rules, expected):
    verdict = gopher_quality(text, rules)
    assert rule(verdict) == expected
    if verdict:
        assert any(ch.isdigit() for ch in verdict[1])  # the measured value and the threshold


def test_gopher_quality_reason_has_value_and_threshold():
    assert gopher_quality("Too short to keep.") == ("gopher_short_doc", "4 words < min_doc_words 50")
    # 60 words of 20 letters
    assert gopher_quality(" ".join(["internationalization"] * 60))[1] == \
        "mean word length 20.00 > max_avg_word_length 10"


# ---------------------------------------------------------------- Gopher repetition

PARAS = ["First paragraph about the mill and the river that turns its heavy wheel.",
         "Second paragraph about farmers who bring their grain in the autumn.",
         "Third paragraph about children who watch the wheel and the water."]
PHRASE = "the quiet valley keeps its old stories safe for every patient traveler"


@pytest.mark.parametrize("text, rules, expected", [
    ("", GopherRepetitionRules(), "gopher_rep_empty"),
    ("\n\n".join([PARAS[0], PARAS[1], PARAS[0], PARAS[0]]), GopherRepetitionRules(), "gopher_rep_dup_para_frac"),
    ("\n\n".join([GOOD, PARAS[0], PARAS[1], GOOD]), GopherRepetitionRules(), "gopher_rep_dup_para_char_frac"),
    ("\n".join([LINES[0], LINES[1], LINES[0], LINES[1], LINES[2]]), GopherRepetitionRules(),
     "gopher_rep_dup_line_frac"),
    ("\n".join([GOOD.replace("\n", " "), LINES[0], LINES[1], LINES[2], GOOD.replace("\n", " ")]),
     GopherRepetitionRules(), "gopher_rep_dup_line_char_frac"),
    (" ".join(f"big data {w}" for w in GOOD.split()), GopherRepetitionRules(), "gopher_rep_top_2_gram"),
    (" ".join(f"big data {w}" for w in GOOD.split()), GopherRepetitionRules(top_n_grams=((3, 0.18),),
                                                                            dup_n_grams=()), None),
    (" ".join(f"on a hill {w}" for w in GOOD.split()), GopherRepetitionRules(top_n_grams=((3, 0.18),)),
     "gopher_rep_top_3_gram"),
    ("\n".join([LINES[0] + " " + PHRASE + ".", LINES[1] + " " + PHRASE + ".", LINES[2] + " " + PHRASE + "."]),
     GopherRepetitionRules(), "gopher_rep_duplicated_5_n_grams"),
    ("\n".join([LINES[0] + " " + PHRASE + ".", LINES[1] + " " + PHRASE + ".", LINES[2] + " " + PHRASE + "."]),
     GopherRepetitionRules(dup_n_grams=((7, 0.13),)), "gopher_rep_duplicated_7_n_grams"),
    ("\n".join([LINES[0] + " " + PHRASE + ".", LINES[1] + " " + PHRASE + ".", LINES[2] + " " + PHRASE + "."]),
     GopherRepetitionRules(dup_n_grams=()), None),
    ("\n\n".join(LINES), GopherRepetitionRules(), None),
])
def test_gopher_repetition(text, rules, expected):
    assert rule(gopher_repetition(text, rules)) == expected


def test_ngram_numbers_by_hand():
    words = "x y x y x y z".split()
    # "x y" three times: 3 characters (with the space) x 3
    assert top_ngram_chars(words, 2) == 9
    # scan: xy yx | xy (seen: +2, jump 2) | xy (seen: +2, jump 2) -> end; spaces not counted
    assert duplicated_ngram_chars(words, 2) == 4
    # xyx yxy | xyx (seen: +3, jump 3) -> end
    assert duplicated_ngram_chars(words, 3) == 3
    assert duplicated_ngram_chars(words, 5) == 0  # nothing repeats
    assert top_ngram_chars(words, 8) == 0  # fewer words than n
    # a tie goes to the n-gram seen first: "bb cc" (5 chars) and "a dd" both twice -> 5 x 2
    assert top_ngram_chars("bb cc a dd bb cc a dd".split(), 2) == 10
    assert find_duplicates(["ab", "c", "ab", "ab"]) == (2, 4)


def test_repetition_fractions_by_hand():
    # lines: 2 of 5 repeat an earlier one -> 0.4 > 0.3
    text = "\n".join([LINES[0], LINES[1], LINES[0], LINES[1], LINES[2]])
    assert gopher_repetition(text) == ("gopher_rep_dup_line_frac", "repeated lines 0.400 > dup_line_frac 0.3")
    # "big data" (8 chars) once per word of GOOD, over the text's length
    text = " ".join(f"big data {w}" for w in GOOD.split())
    assert len(GOOD.split()) == 87
    assert gopher_repetition(text)[1] == f"top 2-gram covers {8 * 87 / len(text):.3f} of characters > 0.2"


def test_split_words_follows_spacys_english_rules():
    assert split_words("Hello world, it's e.g. the os.path module (see https://x.org/a). Don't stop-it "
                       "3.14 1,000 --flag foo(bar): cannot Inc. state-of-the-art a/b ...") == [
        "Hello", "world", ",", "it", "'s", "e.g.", "the", "os.path", "module", "(", "see", "https://x.org/a",
        ")", ".", "Do", "n't", "stop", "-", "it", "3.14", "1,000", "--flag", "foo(bar", "):", "can", "not",
        "Inc.", "state", "-", "of", "-", "the", "-", "art", "a", "/", "b", "..."]


def test_count_sentences():
    assert count_sentences("One sentence here.") == 1
    assert count_sentences("This is e.g. one. And two! Three... four? Yes.") == 4
    assert count_sentences("Version 3.14 is out. See c. 2 for details.") == 2


# ---------------------------------------------------------------- C4

def test_c4_drops_lines_and_rewrites_the_text():
    text = "\n".join([
        "Installation",                                      # no terminal punctuation
        LINES[0],
        "Please enable JavaScript to view the comments.",     # javascript
        "  " + LINES[1] + "  ",                               # stripped, kept
        "Read our Privacy Policy before you continue.",       # policy
        "Too short.",                                         # fewer than 3 words
        "It ends without an ending...",                       # an ellipsis is not a full stop
        "The mill was built in 1820.[1] It still works.[citation needed]",  # citations removed
        LINES[2], LINES[3], LINES[4],
    ])
    kept, verdict = c4_filter_lines(text)
    assert verdict is None
    assert kept == "\n".join([LINES[0], LINES[1], "The mill was built in 1820. It still works.",
                              LINES[2], LINES[3], LINES[4]])


@pytest.mark.parametrize("text, rules, expected", [
    (GOOD + "\nLorem ipsum dolor sit amet, consectetur.", C4Rules(), "c4_lorem_ipsum"),
    (GOOD + "\nUse a dict such as {'a': 1} for this.", C4Rules(), "c4_curly_bracket"),
    (GOOD + "\nUse a dict such as {'a': 1} for this.", C4Rules(filter_curly_bracket=False), None),
    (GOOD + "\ndef main() {", C4Rules(), None),  # the brace's line is dropped first (no punctuation)
    ("\n".join(LINES[:3]), C4Rules(), "c4_too_few_sentences"),
    ("\n".join(LINES[:3]), C4Rules(min_num_sentences=3), None),
    ("\n".join(LINES[:3]), C4Rules(min_num_sentences=-1), None),
    ("# Title\n- item one\n- item two\n```\ncode\n```", C4Rules(), "c4_too_few_sentences"),
])
def test_c4_document_rules(text, rules, expected):
    assert rule(c4_filter_lines(text, rules)[1]) == expected


def test_c4_without_line_rules_keeps_headings_and_short_lines():
    rules = C4Rules(filter_no_terminal_punct=False, min_words_per_line=-1, min_num_sentences=-1)
    assert c4_filter_lines("Title\n\nSome text here\nOk", rules) == ("Title\n\nSome text here\nOk", None)


# ---------------------------------------------------------------- FineWeb

@pytest.mark.parametrize("text, rules, expected", [
    (" \n\n  \n", FineWebRules(), "fineweb_empty"),
    ("\n".join(line.rstrip(".") for line in LINES), FineWebRules(), "fineweb_line_punct_ratio"),
    ("\n".join(line.rstrip(".") for line in LINES), FineWebRules(line_punct_exclude_zero=True), None),
    ("\n".join(f"Short line {i}." for i in range(10)), FineWebRules(), "fineweb_short_line_ratio"),
    (GOOD + "\n" + LINES[0], FineWebRules(), "fineweb_char_dup_ratio"),
    (GOOD + "\n" + LINES[0], FineWebRules(char_duplicates_ratio=0.2), None),
    ("\n".join(f"Internationalization{i} counterrevolutionaries{i}." for i in range(20)), FineWebRules(),
     "fineweb_list_ratio"),
])
def test_fineweb_quality(text, rules, expected):
    assert rule(fineweb_quality(text, rules)) == expected


def test_fineweb_numbers_by_hand():
    # one of 7 lines repeats: its 78 characters over the text's characters without newlines
    text = GOOD + "\n" + LINES[0]
    expected = len(LINES[0]) / (len(text) - 6)
    assert fineweb_quality(text) == ("fineweb_char_dup_ratio",
                                     f"characters in repeated lines {expected:.3f} > char_duplicates_ratio 0.01")


# ---------------------------------------------------------------- all of them, in order

def test_filters_run_in_order_and_the_first_failure_wins():
    # both too short for Gopher and lorem ipsum for C4: Gopher quality runs before C4's document rules
    text = "Lorem ipsum dolor sit amet, consectetur."
    assert rule(filter_document(text)[1]) == "gopher_short_doc"
    # (a text this short also fails Gopher's top 2-gram rule: its first 2-gram is 11 of 40 characters)
    assert rule(filter_document(text, FilterConfig(gopher_quality=False))[1]) == "gopher_rep_top_2_gram"
    assert rule(filter_document(text, FilterConfig(gopher_quality=False, gopher_repetition=False))[1]) == \
        "c4_lorem_ipsum"
    # a page the C4 line rules emptied is C4's drop, not the empty text's
    assert filter_document("Lorem\nipsum")[1] == ("c4_too_few_sentences",
                                                  "0 sentences < min_num_sentences 5 (0 of 2 lines kept)")
    # C4 rewrites the text the later filters see, and says so in their reasons
    _, verdict = filter_document("# Heading\n" + "\n".join(LINES[:3]))
    assert verdict == ("gopher_short_doc", "44 words < min_doc_words 50 (after C4 kept 3 of 4 non-blank lines)")
    assert filter_document(GOOD + "\n## A heading without a full stop") == (GOOD, None)


def test_disabled_groups_do_not_run():
    off = FilterConfig(c4=False, gopher_quality=False, gopher_repetition=False, fineweb=False)
    assert filter_document("# x\n", off) == ("# x\n", None)


def test_software_docs_preset_keeps_a_readme_the_defaults_reject():
    readme = "\n".join([
        "# mill", "",
        "A small library that reads the configuration of a mill and reports on its state.",
        "It checks every option, explains what it found and what it would change.", "",
        "## Install", "", "```", "pip install mill", "```", "",
        "## Usage", "", "```python", "import mill", "config = mill.load('mill.toml')",
        "report = mill.check(config, strict=True)", "print(report.summary())", "```", "",
        "The report lists each option with its value and the rule that applies to it, so you can see",
        "at a glance which settings are risky and why the library would change them.",
    ])
    assert rule(filter_document(readme)[1]) is not None
    assert filter_document(readme, FilterConfig.software_docs()) == (readme, None)


# ---------------------------------------------------------------- on Spark

def _docs(spark):
    rows = [
        ("good", GOOD),
        ("heading", "Introduction\n" + GOOD),                       # kept, the heading dropped by C4
        ("short", "Too short to keep."),                            # gopher_short_doc
        ("lorem", GOOD + "\nLorem ipsum dolor sit amet, consectetur."),  # c4_lorem_ipsum
        ("repeated", "\n".join([LINES[0], LINES[1], LINES[0], LINES[1], LINES[2], LINES[3]])),
    ]
    return spark.createDataFrame(
        [(doc_id, f"file:///{doc_id}.txt", "txt", text, len(text), len(text.split())) for doc_id, text in rows],
        "doc_id string, source string, kind string, text string, n_chars long, n_words long")


@pytest.fixture(scope="module")
def runs(spark):
    """The same documents filtered on 1 and on 3 partitions."""
    docs = _docs(spark)
    out = {}
    for partitions in (1, 3):
        result = filters.apply_filters(docs.repartition(partitions), FilterConfig())
        out[partitions] = (result.kept.toPandas().sort_values("doc_id").reset_index(drop=True),
                           result.rejected.toPandas().sort_values("doc_id").reset_index(drop=True),
                           filters.drop_stats(result.dropped))
        result.release()
    return docs, out


def test_apply_filters_keeps_columns_and_rewrites_text(runs):
    docs, out = runs
    kept, _, _ = out[1]
    assert list(kept.columns) == docs.columns
    assert kept["doc_id"].tolist() == ["good", "heading"]
    heading = kept.set_index("doc_id").loc["heading"]
    assert heading["text"] == GOOD
    assert heading["n_chars"] == len(GOOD) and heading["n_words"] == len(GOOD.split())


def test_apply_filters_quarantines_with_rule_names(runs):
    _, out = runs
    _, rejected, _ = out[1]
    assert list(rejected.columns) == QUARANTINE_COLUMNS
    assert dict(zip(rejected["doc_id"], rejected["rule"])) == {
        "lorem": "c4_lorem_ipsum", "repeated": "gopher_rep_dup_line_frac", "short": "gopher_short_doc"}
    assert set(rejected["step"]) == {"filtered"}
    assert rejected.set_index("doc_id").loc["short", "reason"] == "4 words < min_doc_words 50"
    assert rejected.set_index("doc_id").loc["short", "text_preview"] == "Too short to keep."


def test_results_do_not_depend_on_partitioning(runs):
    _, out = runs
    (kept1, rejected1, stats1), (kept3, rejected3, stats3) = out[1], out[3]
    assert kept1.equals(kept3)
    cols = ["doc_id", "source", "step", "rule", "reason", "text_preview"]
    assert rejected1[cols].equals(rejected3[cols])
    assert stats1 == stats3


def test_drop_stats_count_documents_and_characters(runs, spark):
    docs, out = runs
    stats = out[1][2]
    lengths = dict(docs.select("doc_id", "n_chars").collect())
    assert [(s["rule"], s["documents"], s["characters"]) for s in stats] == [
        ("c4_lorem_ipsum", 1, lengths["lorem"]),
        ("gopher_rep_dup_line_frac", 1, lengths["repeated"]),
        ("gopher_short_doc", 1, lengths["short"]),
    ]
    assert stats[2]["examples"] == [{"doc_id": "short", "preview": "Too short to keep."}]
    table = filters.drop_stats_markdown(stats)
    assert table.splitlines()[0] == "| rule | documents | characters | examples |"
    assert f"| `gopher_short_doc` | 1 | {lengths['short']} | `short` Too short to keep. |" in table
    assert table.splitlines()[-1] == f"| **total** | 3 | {sum(s['characters'] for s in stats):,} | |"


def test_drop_stats_needs_character_counts(runs, spark):
    docs, _ = runs
    result = filters.apply_filters(docs, FilterConfig())
    with pytest.raises(ValueError, match="n_chars"):
        filters.drop_stats(result.rejected)
    result.release()


def test_drop_stats_examples_are_the_smallest_ids(spark):
    dropped = spark.createDataFrame(
        [(f"id{i}", "gopher_short_doc", 10 * i, f"text {i}") for i in range(5, 0, -1)],
        "doc_id string, rule string, n_chars long, text_preview string")
    [stat] = filters.drop_stats(dropped, examples=2)
    assert (stat["documents"], stat["characters"]) == (5, 150)
    assert [e["doc_id"] for e in stat["examples"]] == ["id1", "id2"]
