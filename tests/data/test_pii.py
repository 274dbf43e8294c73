"""PII: e-mails, phone numbers and IPv4 addresses replaced by tags and counted; look-alikes left alone."""

import pytest

from llm_assets.data import pii


@pytest.mark.parametrize("text, expected, counts", [
    ("Mail jane.doe+lists@example.co.uk today", "Mail <EMAIL> today", {"email": 1}),
    ("Author-email: Ann <ann@corp.io>, bob@x.org", "Author-email: Ann <<EMAIL>>, <EMAIL>", {"email": 2}),
    ("Call 555-123-4567 or (555) 123-4567.", "Call <PHONE> or <PHONE>.", {"phone": 2}),
    ("Office: +44 20 7946 0958; fax +1-202-555-0173", "Office: <PHONE>; fax <PHONE>", {"phone": 2}),
    ("Server 192.168.0.1 and 10.0.0.255:8080", "Server <IP_ADDRESS> and <IP_ADDRESS>:8080", {"ip_address": 2}),
    ("version 1.2.3, released 2024-01-31, build 20240131, 999.1.1.1, pi 3.14159",
     "version 1.2.3, released 2024-01-31, build 20240131, 999.1.1.1, pi 3.14159", {}),
])
def test_scrub_replaces_and_counts_each_type(text, expected, counts):
    scrubbed, got = pii.scrub(text)
    assert scrubbed == expected
    assert got == {"email": 0, "phone": 0, "ip_address": 0, **counts}


def test_scrub_documents_on_spark(spark):
    docs = spark.createDataFrame([
        ("a", "contact a@b.com or 555.123.4567 from 8.8.8.8"),
        ("b", "nothing personal here"),
        ("c", "two mails: x@y.dev, z@w.dev"),
    ], "doc_id string, text string")
    scrubbed = pii.scrub_documents(docs)
    rows = {r["doc_id"]: r for r in scrubbed.collect()}
    assert rows["a"]["text"] == "contact <EMAIL> or <PHONE> from <IP_ADDRESS>"
    assert (rows["a"]["pii_email"], rows["a"]["pii_phone"], rows["a"]["pii_ip_address"]) == (1, 1, 1)
    assert rows["b"]["text"] == "nothing personal here"
    assert pii.pii_totals(scrubbed) == {"email": 3, "phone": 1, "ip_address": 1}
