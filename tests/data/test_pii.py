"""PII: each type replaced by its tag and counted, look-alikes left alone, dense documents quarantined."""

import re

import pytest
from pyspark.sql import functions as F

from llm_assets.data import pii

GHP = "ghp_" + "a1B2c3D4e5" * 3 + "F6g7H8"  # 36 characters after the prefix
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq98vXoJm1fGx0u+5Zr3Q2sYk\n"
       "c0FtZXR5cGUgb2Yga2V5IG1hdGVyaWFs==\n-----END RSA PRIVATE KEY-----")

HITS = [
    # email
    ("Mail jane.doe+lists@example.co.uk today", "Mail <EMAIL> today", {"email": 1}),
    ("Author-email: Ann <ann@corp.io>, bob@x.org", "Author-email: Ann <<EMAIL>>, <EMAIL>", {"email": 2}),
    # phone
    ("Call 555-123-4567 or (555) 123-4567.", "Call <PHONE> or <PHONE>.", {"phone": 2}),
    ("Office: +44 20 7946 0958; fax +1-202-555-0173", "Office: <PHONE>; fax <PHONE>", {"phone": 2}),
    # ip_address: IPv4 and IPv6 share the tag and the count
    ("Server 192.168.0.1 and 10.0.0.255:8080", "Server <IP_ADDRESS> and <IP_ADDRESS>:8080", {"ip_address": 2}),
    ("Bind 2001:db8::1 or fe80::1ff:fe23:4567:890a.", "Bind <IP_ADDRESS> or <IP_ADDRESS>.", {"ip_address": 2}),
    ("curl http://[::1]:8080/ and 2001:0DB8:85A3:0000:0000:8A2E:0370:7334",
     "curl http://[<IP_ADDRESS>]:8080/ and <IP_ADDRESS>", {"ip_address": 2}),
    ("mapped ::ffff:192.168.0.1 is one address", "mapped <IP_ADDRESS> is one address", {"ip_address": 1}),
    # credit_card
    ("Visa 4111 1111 1111 1111, MC 5555-5555-5555-4444.", "Visa <CREDIT_CARD>, MC <CREDIT_CARD>.",
     {"credit_card": 2}),
    ("amex 378282246310005 and 3782 822463 10005", "amex <CREDIT_CARD> and <CREDIT_CARD>", {"credit_card": 2}),
    # iban
    ("Pay to DE89 3704 0044 0532 0130 00 by Friday", "Pay to <IBAN> by Friday", {"iban": 1}),
    ("IBAN: GB82WEST12345698765432; CH93 0076 2011 6238 5295 7", "IBAN: <IBAN>; <IBAN>", {"iban": 2}),
    # secret: token shapes
    ("aws_access_key_id AKIAIOSFODNN7EXAMPLE", "aws_access_key_id <SECRET>", {"secret": 1}),
    (f"export GITHUB_TOKEN={GHP}", "export GITHUB_TOKEN=<SECRET>", {"secret": 1}),
    ("pat github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789", "pat <SECRET>", {"secret": 1}),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp", "slack <SECRET>", {"secret": 1}),
    ("OPENAI_API_KEY=sk-proj-abc123DEF456ghi789JKL012mno", "OPENAI_API_KEY=<SECRET>", {"secret": 1}),
    ("maps key=AIzaSyA-1234567890abcdefghijklmnopqrstu&q=1", "maps key=<SECRET>&q=1", {"secret": 1}),
    (f"key file:\n{PEM}\nend", "key file:\n<SECRET>\nend", {"secret": 1}),
    # secret: high-entropy assignments keep the key and quotes
    ('aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
     'aws_secret_access_key = "<SECRET>"', {"secret": 1}),
    ('{"client_secret": "a8f5f167f44f4964e6c998dee827110c", "password": \'s3cr3tP@ssw0rd!\'}',
     '{"client_secret": "<SECRET>", "password": \'<SECRET>\'}', {"secret": 2}),
    ('api_key = "sk-abc123DEF456ghi789JKL012mno"', 'api_key = "<SECRET>"', {"secret": 1}),  # counted once
]

LOOK_ALIKES = [
    "version 1.2.3, released 2024-01-31, build 20240131, 999.1.1.1, pi 3.14159",
    "16 digits failing Luhn: 4111 1111 1111 1112 and 1234567812345678; zeros 0000 0000 0000 0000",
    "mixed separators 4111 1111-1111 1111, order no. 1234567890123, 20-digit run 12345678901234567890",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3, md5 d41d8cd98f00b204e9800998ecf8427e",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "std::vector<int> v; ns::A1::B2(); auto x = a::b; Foo::Bar::baz",
    "xs[::2], ys[1::2], rev[::-1], f :: Int -> Int",
    "at 12:34:56, MAC 00:1a:2b:3c:4d:5e, ratio 16:9",
    "IBAN with a bad check DE89 3704 0044 0532 0130 01, unknown country XX89 3704 0044 0532 0130 00",
    'password = "changeme"; token: "YOUR_TOKEN_HERE"; api_key = "<your-api-key>"; secret = "hunter22"',
    'tokenizer = "meta-llama/Llama-2-7b-hf"; max_tokens = "4096"; token = tokens[0]',
    "scikit-learn, sk-learn and sk-some-really-long-kebab-case-name; AKIA alone; ghp_short",
    "-----BEGIN RSA PRIVATE KEY----- header quoted in prose, no block",
]


def _counts(**hits) -> dict[str, int]:
    return {t: 0 for t in pii.PII_TYPES} | hits


@pytest.mark.parametrize("text, expected, counts", HITS)
def test_scrub_replaces_and_counts_each_type(text, expected, counts):
    scrubbed, got = pii.scrub(text)
    assert scrubbed == expected
    assert got == _counts(**counts)


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_scrub_leaves_look_alikes_alone(text):
    assert pii.scrub(text) == (text, _counts())


@pytest.mark.parametrize("text, expected, counts", [
    # a Slack token's digit runs would be a card and phone digits if secrets did not go first
    ("xoxb-4111111111111111-5551234567-abcdef", "<SECRET>", {"secret": 1}),
    # an address's local part is all digits
    ("4111111111111111@example.com", "<EMAIL>", {"email": 1}),
    # an IBAN's digit groups are a Luhn-valid 18-digit run on their own
    ("DE89 3704 0044 0532 0130 00", "<IBAN>", {"iban": 1}),
    # a card number next to a phone number: neither takes the other's digits
    ("card 4111-1111-1111-1111 tel 555-123-4567", "card <CREDIT_CARD> tel <PHONE>", {"credit_card": 1, "phone": 1}),
])
def test_substitution_order_keeps_each_type_whole(text, expected, counts):
    assert pii.scrub(text) == (expected, _counts(**counts))


def test_scrub_keeps_empty_and_missing_text():
    assert pii.scrub(None) == (None, _counts())
    assert pii.scrub("") == ("", _counts())


@pytest.mark.parametrize("digits, valid", [
    ("4111111111111111", True), ("79927398713", True), ("378282246310005", True), ("1234567812345670", True),
    ("4111111111111112", False), ("79927398710", False), ("1234567812345678", False),
    ("", False), ("4111-1111", False), ("4111²", False),
])
def test_luhn(digits, valid):
    assert pii.luhn_valid(digits) is valid


@pytest.mark.parametrize("iban, valid", [
    ("GB82 WEST 1234 5698 7654 32", True), ("DE89370400440532013000", True), ("NO9386011117947", True),
    ("FR1420041010050500013M02606", True), ("CH93 0076 2011 6238 5295 7", True),
    ("DE89370400440532013001", False),   # check digits do not match
    ("DE8937040044053201300", False),    # one character short for Germany
    ("XX89370400440532013000", False),   # no such country
    ("de89370400440532013000", False),   # lower case is not the electronic format
    ("GB82 WEST 1234 5698 7654 3!", False),
])
def test_iban_mod97(iban, valid):
    assert pii.iban_valid(iban) is valid


def test_high_entropy_needs_length_letters_digits_and_spread():
    assert pii.shannon_entropy("aaaa") == 0.0 and pii.shannon_entropy("abcdefgh") == 3.0
    assert pii.is_high_entropy("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert not pii.is_high_entropy("abc1234")         # too short
    assert not pii.is_high_entropy("YOUR_API_KEY")    # no digit: a placeholder
    assert not pii.is_high_entropy("aaaa1111")        # 1 bit per character


def test_tag_regex_matches_every_tag_and_nothing_else():
    tag = re.compile(pii.TAG_REGEX)
    assert all(tag.fullmatch(t) for t in pii.TAGS.values())
    assert not tag.search("<EMAILS> <ip_address> <SECRET <HTML>")
    assert set(pii.TAGS) == set(pii.PII_TYPES) and pii.COUNT_COLUMNS == tuple(f"pii_{t}" for t in pii.PII_TYPES)


CONTACTS = "".join(f"{name} {name.lower()}@corp.io 555-010-{1000 + i}\n" for i, name in enumerate(
    ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]))


def test_scrub_split_and_totals_on_spark(spark):
    docs = spark.createDataFrame([
        ("a", "s/a", "contact a@b.com or 555.123.4567 from 8.8.8.8 or 2001:db8::8"),
        ("b", "s/b", "nothing personal here, just std::vector<int> and 4111 1111 1111 1112"),
        ("c", "s/c", f"Pay 4111 1111 1111 1111 to DE89 3704 0044 0532 0130 00 with key {GHP}. " + "Words. " * 40),
        ("d", "s/d", CONTACTS),
        ("e", "s/e", None),
    ], "doc_id string, source string, text string")
    scrubbed = pii.scrub_documents(docs).cache()
    assert scrubbed.columns == ["doc_id", "source", "text", *pii.COUNT_COLUMNS]
    rows = {r["doc_id"]: r.asDict() for r in scrubbed.collect()}
    assert rows["a"]["text"] == "contact <EMAIL> or <PHONE> from <IP_ADDRESS> or <IP_ADDRESS>"
    assert [rows["a"][c] for c in pii.COUNT_COLUMNS] == [1, 1, 2, 0, 0, 0]
    assert rows["b"]["text"].startswith("nothing personal here, just std::vector<int> and 4111 1111 1111 1112")
    assert rows["c"]["text"].startswith("Pay <CREDIT_CARD> to <IBAN> with key <SECRET>. ")
    assert rows["e"]["text"] is None and rows["e"]["pii_email"] == 0
    assert pii.pii_totals(scrubbed) == {"email": 7, "phone": 7, "ip_address": 2, "credit_card": 1, "iban": 1,
                                        "secret": 1}
    # both shared patterns mean the same to Java's regex: no e-mail is left, and the tags are found
    assert scrubbed.filter(F.col("text").rlike(pii.EMAIL_REGEX)).count() == 0
    assert {r["doc_id"] for r in scrubbed.filter(F.col("text").rlike(pii.TAG_REGEX)).collect()} == {"a", "c", "d"}

    # `a` (4 in 60 characters) and the contact list `d` are over 20 per 1k; `c` has 3 in 327
    kept, rejected = pii.split_by_pii_density(scrubbed, max_pii_per_1k_chars=20.0)
    assert sorted(r["doc_id"] for r in kept.collect()) == ["b", "c", "e"]
    assert kept.columns == scrubbed.columns
    quarantined = {r["doc_id"]: r.asDict() for r in rejected.collect()}
    assert set(quarantined) == {"a", "d"}
    assert rejected.columns == ["doc_id", "source", "step", "rule", "reason", "text_preview", "quarantined_at"]
    d = quarantined["d"]
    density = 12 * 1000 / len(rows["d"]["text"])
    assert (d["step"], d["rule"], d["source"]) == ("curated_corpus", "pii_density", "s/d")
    assert d["reason"] == f"pii density {density:.1f} per 1k chars > max 20"
    assert d["text_preview"].startswith("Ann <EMAIL> <PHONE>\n")

    # a document needs `min_pii` replacements to be rejected; a high threshold keeps everything
    _, rejected_one = pii.split_by_pii_density(scrubbed, max_pii_per_1k_chars=20.0, min_pii=5)
    assert [r["doc_id"] for r in rejected_one.collect()] == ["d"]
    kept_all, rejected_all = pii.split_by_pii_density(scrubbed, max_pii_per_1k_chars=1000.0)
    assert kept_all.count() == 5 and rejected_all.count() == 0
    scrubbed.unpersist()
