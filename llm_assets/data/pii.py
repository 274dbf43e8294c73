"""PII scrubbing: e-mail addresses, phone numbers and IPv4 addresses replaced by tags.

Regexes, not a model: they are fast, deterministic and easy to audit. E-mails go first (so a phone
pattern never eats the digits of an address), then IPv4, then phones. Phone numbers need a
recognizable shape (`+country ...`, `(area) ...` or `555-123-4567`), so versions (`1.2.3`), dates
(`2024-01-31`) and plain long numbers are left alone. A version with four numeric parts
(`1.2.3.4`) is indistinguishable from an IPv4 address and is replaced.
"""

from __future__ import annotations

import re

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

EMAIL_TAG, PHONE_TAG, IP_TAG = "<EMAIL>", "<PHONE>", "<IP_ADDRESS>"
PII_TYPES = ("email", "phone", "ip_address")

# Shared with the Great Expectations suite, which checks that none is left (Python and Java regex alike).
EMAIL_REGEX = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
EMAIL = re.compile(EMAIL_REGEX)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
PHONE = re.compile(r"""
    (?<![\w+])
    (?:
        \+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}   # +44 20 7946 0958, +1-555-123-4567
      | \(\d{3}\)[ .-]?\d{3}[ .-]\d{4}                                     # (555) 123-4567
      | \d{3}[.-]\d{3}[.-]\d{4}                                            # 555-123-4567, 555.123.4567
    )
    (?![\w-]|\.\d)
""", re.X)


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """`text` with PII replaced by tags, and how many of each type were replaced."""
    text, n_email = EMAIL.subn(EMAIL_TAG, text)
    text, n_ip = IPV4.subn(IP_TAG, text)
    text, n_phone = PHONE.subn(PHONE_TAG, text)
    return text, {"email": n_email, "phone": n_phone, "ip_address": n_ip}


_SCRUBBED = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("pii_email", T.LongType()),
    T.StructField("pii_phone", T.LongType()),
    T.StructField("pii_ip_address", T.LongType()),
])


@F.pandas_udf(_SCRUBBED)
def _scrub_udf(text: pd.Series) -> pd.DataFrame:
    rows = []
    for t in text:
        clean, counts = scrub(t)
        rows.append((clean, counts["email"], counts["phone"], counts["ip_address"]))
    return pd.DataFrame(rows, columns=["text", "pii_email", "pii_phone", "pii_ip_address"])


def scrub_documents(docs: DataFrame) -> DataFrame:
    """`docs` with `text` scrubbed and per-document counts `pii_email`, `pii_phone`, `pii_ip_address`."""
    others = [c for c in docs.columns if c != "text"]
    return docs.select(*others, _scrub_udf("text").alias("p")).select(*others, "p.*")


def pii_totals(scrubbed: DataFrame) -> dict[str, int]:
    """Replacements per PII type over the whole frame."""
    row = scrubbed.agg(*[F.coalesce(F.sum(f"pii_{t}"), F.lit(0)).alias(t) for t in PII_TYPES]).first()
    return {t: int(row[t]) for t in PII_TYPES}
