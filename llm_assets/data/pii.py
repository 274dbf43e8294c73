"""PII scrubbing: e-mails, phones, IP addresses, card numbers, IBANs and secrets replaced by typed tags.

Regexes plus checksums, not a model or a secrets scanner: they are fast, deterministic, need nothing
at run time (they run inside a Spark pandas UDF on every worker) and are easy to audit. A regex finds
a candidate; where the type has a checksum or a grammar, the candidate is tagged only if it passes.
`detect-secrets` was not used: its plugins are these same token regexes plus entropy scanners that tag
every git SHA and hex hash, it reports secret values per line (not spans) through global settings, and
it would be one more dependency on every Spark worker.


- `secret` -> `<SECRET>`: a PEM private key block; an AWS key id (`AKIA`, `ASIA`), GitHub (`ghp_`, `gho_`,
  `ghu_`, `ghs_`, `ghr_`, `github_pat_`), Slack (`xox[baprs]-`), OpenAI-style (`sk-`, with a digit in
  it) or Google (`AIza`) token; the quoted value of an `api_key`/`secret`/`token`/`password` assignment
  when it is high-entropy (`is_high_entropy`; the key and quotes stay).
- `email` -> `<EMAIL>`: `EMAIL_REGEX`.
- `iban` -> `<IBAN>`: upper-case country code, check digits and the country's length, mod-97 == 1 (ISO 13616).
- `credit_card` -> `<CREDIT_CARD>`: 13-19 digits with one kind of separator (none, spaces or dashes),
  Luhn-valid, not one repeated digit.
- `ip_address` -> `<IP_ADDRESS>`: an IPv6 address (the `ipaddress` module parses it) or a dotted IPv4 one.
- `phone` -> `<PHONE>`: a recognizable shape: `+country ...`, `(area) ...` or `555-123-4567`.

IPv6 folds into `ip_address` (same tag, same count): the tag cannot tell them apart afterwards, and one
count per tag keeps `pii_totals` and the density measure simple.

Order of the substitutions, so that one type never eats another's digits: secrets first (a key's
body holds digit runs and hex that later patterns would take apart; inside secrets: PEM blocks, then
token shapes, then keyword assignments), e-mails (an address may hold digits or an IP literal), IBANs
(their digit groups may look like a card number), card numbers, IPv6 (before IPv4, so `::ffff:1.2.3.4`
is one address), IPv4, and phones last (they match the loosest shapes). Digit-run patterns refuse to
start or stop inside a longer run, so a later pattern never tags part of a number an earlier one left.

Look-alikes that stay: versions (`1.2.3`), dates (`2024-01-31`), plain long numbers and 16-digit numbers
that fail Luhn, UUIDs, git SHAs and hex hashes, C++ scopes (`std::vector`, `A1::B2()`), Python slices
(`x[::2]`), clock times (`12:34:56`), MAC addresses, `password = "changeme"` (low entropy) and
placeholders such as `token = "YOUR_TOKEN"`. A version with four numeric parts (`1.2.3.4`) is
indistinguishable from an IPv4 address and is replaced. A compressed IPv6 address with one or two
groups needs a group of 3-4 hex digits (`fe80::1`) or to be `::1`, so `1::2` (a slice) stays.

`split_by_pii_density` quarantines documents that are mostly PII (a contact list, a leaked key dump):
density is replacements per 1,000 characters of the scrubbed text.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from llm_assets.data.ingest import quarantine_rows

TAGS = {
    "email": "<EMAIL>", "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>",
    "credit_card": "<CREDIT_CARD>", "iban": "<IBAN>", "secret": "<SECRET>",
}
PII_TYPES = tuple(TAGS)
EMAIL_TAG, PHONE_TAG, IP_TAG = TAGS["email"], TAGS["phone"], TAGS["ip_address"]
CARD_TAG, IBAN_TAG, SECRET_TAG = TAGS["credit_card"], TAGS["iban"], TAGS["secret"]

# Both are shared with the Great Expectations suite, so each means the same in Python's re and Java's regex.
# The lookbehind starts a match only at the start of a run of local-part characters: the same matches,
# but linear time on long runs without an `@` (base64 blobs), where a free start was quadratic.
EMAIL_REGEX = r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
TAG_REGEX = "<(?:" + "|".join(tag[1:-1] for tag in TAGS.values()) + ")>"
EMAIL = re.compile(EMAIL_REGEX)
TAG = re.compile(TAG_REGEX)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
# Candidates only: `_ipv6` decides with the `ipaddress` module and the look-alike rules above.
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
                  r"(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:(<]|\.\w)")
PHONE = re.compile(r"""
    (?<![\w+])
    (?:
        \+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}   # +44 20 7946 0958, +1-555-123-4567
      | \(\d{3}\)[ .-]?\d{3}[ .-]\d{4}                                     # (555) 123-4567
      | \d{3}[.-]\d{3}[.-]\d{4}                                            # 555-123-4567, 555.123.4567
    )
    (?![\w-]|\.\d)
""", re.X)
# A whole run of 13-19 digits: not started or continued by a digit, a separator+digit, a letter or a decimal point.
CARD = re.compile(r"(?<![\w+.,-])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d|\w|[.,]\d)")
IBAN = re.compile(r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?!\w)")

# The body cannot hold `-----`, so a text full of BEGIN lines without an END stays linear.
PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----(?:[^-]|-(?!----))*"
                     r"-----END ([A-Z0-9]+ )*PRIVATE KEY-----")
SECRET_TOKEN = re.compile(r"""
    (?<![\w-])
    (?:
        (?:AKIA|ASIA)[A-Z0-9]{16}                            # AWS access key id
      | gh[pousr]_[A-Za-z0-9]{36,}                           # GitHub classic / OAuth / app tokens
      | github_pat_[A-Za-z0-9_]{22,}                         # GitHub fine-grained token
      | xox[baprs]-[A-Za-z0-9-]{10,}                         # Slack
      | sk-(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}            # OpenAI-style (needs a digit: not kebab-case words)
      | AIza[0-9A-Za-z_-]{35}                                # Google API key
    )
    (?![\w-])
""", re.X)
SECRET_ASSIGNMENT = re.compile(r"""
    (?<![\w.-])                                             # a key starts a dotted name: linear time on `a.a.a...`
    (?P<key>[\w.-]*?(?:api[_-]?key|secret(?:[_-]?(?:access[_-]?)?key)?|token|passw(?:or)?d))(?![\w-])
    (?P<sep>["']?\s*(?:=|:|=>)\s*)
    (?P<quote>["'])(?P<value>[^"'\s]{8,})(?P=quote)
""", re.X | re.I)

# IBAN length by country, from the ISO 13616 registry (SWIFT's IBAN Registry); a new country needs a line.
_IBAN_LENGTHS = dict(
    AD=24, AE=23, AL=28, AT=20, AZ=28, BA=20, BE=16, BG=22, BH=22, BI=27, BR=29, BY=28, CH=21, CR=22,
    CY=28, CZ=24, DE=22, DJ=27, DK=18, DO=28, EE=20, EG=29, ES=24, FI=18, FK=18, FO=18, FR=27, GB=22,
    GE=22, GI=23, GL=18, GR=27, GT=28, HR=21, HU=28, IE=22, IL=23, IQ=23, IS=26, IT=27, JO=30, KW=30,
    KZ=20, LB=28, LC=32, LI=21, LT=20, LU=20, LV=21, LY=25, MC=27, MD=24, ME=22, MK=19, MN=20, MR=27,
    MT=31, MU=30, NI=28, NL=18, NO=15, OM=23, PK=24, PL=28, PS=29, QA=29, RO=24, RS=22, RU=33, SA=24,
    SC=31, SD=18, SE=24, SI=19, SK=24, SM=27, SO=23, ST=25, SV=28, TL=23, TN=24, TR=26, UA=29, VA=22,
    VG=24, XK=20, YE=30,
)
MIN_SECRET_ENTROPY = 3.0  # bits per character; 8 distinct characters give exactly 3.0


def luhn_valid(digits: str) -> bool:
    """True when a string of ASCII digits passes the Luhn (mod 10) check used by payment cards."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """True for an IBAN (spaces allowed) with a known country, its length, and mod-97 == 1 (ISO 13616)."""
    compact = iban.replace(" ", "")
    well_formed = compact.isascii() and compact.isalnum() and compact[2:4].isdigit()
    if not well_formed or _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def is_high_entropy(value: str) -> bool:
    """A secret-like value: 8+ characters, letters and digits, at least `MIN_SECRET_ENTROPY` bits/char."""
    return (len(value) >= 8 and any(c.isalpha() for c in value) and any(c.isdigit() for c in value)
            and shannon_entropy(value) >= MIN_SECRET_ENTROPY)


def _card(m: re.Match) -> str | None:
    raw = m.group()
    digits = re.sub(r"[ -]", "", raw)
    one_separator = not (" " in raw and "-" in raw)
    return CARD_TAG if one_separator and len(set(digits)) > 1 and luhn_valid(digits) else None


def _ipv6(m: re.Match) -> str | None:
    candidate = m.group()
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    if not any(c.isdigit() for c in candidate):
        return None  # `dead::beef`, `a::b`: more likely code than an address
    groups = [g for g in candidate.split(":") if g]
    if "::" in candidate and len(groups) < 3 and candidate != "::1" and max(len(g) for g in groups) < 3:
        return None  # `1::2`, `x[10::20]`: slices, not addresses
    return IP_TAG


def _secret_assignment(m: re.Match) -> str | None:
    value = m.group("value")
    if TAG.search(value) or not is_high_entropy(value):
        return None
    return f"{m.group('key')}{m.group('sep')}{m.group('quote')}{SECRET_TAG}{m.group('quote')}"


def _sub(pattern: re.Pattern, replace, text: str) -> tuple[str, int]:
    """`pattern.subn`, where `replace` may be a function returning the replacement, or None to keep the match."""
    if isinstance(replace, str):
        return pattern.subn(replace, text)
    count = 0

    def one(m: re.Match) -> str:
        nonlocal count
        out = replace(m)
        if out is None:
            return m.group()
        count += 1
        return out

    return pattern.sub(one, text), count


# (type, pattern, tag or function, a substring the text must hold for the pattern to be worth running)
_STEPS = (
    ("secret", PEM_KEY, SECRET_TAG, "PRIVATE KEY-----"),
    ("secret", SECRET_TOKEN, SECRET_TAG, ""),
    ("secret", SECRET_ASSIGNMENT, _secret_assignment, ""),
    ("email", EMAIL, EMAIL_TAG, "@"),
    ("iban", IBAN, lambda m: IBAN_TAG if iban_valid(m.group()) else None, ""),
    ("credit_card", CARD, _card, ""),
    ("ip_address", IPV6, _ipv6, ":"),
    ("ip_address", IPV4, IP_TAG, "."),
    ("phone", PHONE, PHONE_TAG, ""),
)


def scrub(text: str | None) -> tuple[str | None, dict[str, int]]:
    """`text` with PII replaced by tags, and how many of each type were replaced (None stays None)."""
    counts = dict.fromkeys(PII_TYPES, 0)
    if not text:
        return text, counts
    for pii_type, pattern, replace, needle in _STEPS:
        if needle in text:
            text, n = _sub(pattern, replace, text)
            counts[pii_type] += n
    return text, counts


COUNT_COLUMNS = tuple(f"pii_{t}" for t in PII_TYPES)
_SCRUBBED = T.StructType([T.StructField("text", T.StringType()),
                          *[T.StructField(c, T.LongType()) for c in COUNT_COLUMNS]])


def _scrub_batch(text: pd.Series) -> pd.DataFrame:
    rows = []
    for t in text:
        clean, counts = scrub(t)
        rows.append((clean, *counts.values()))
    return pd.DataFrame(rows, columns=["text", *COUNT_COLUMNS])


def scrub_documents(docs: DataFrame) -> DataFrame:
    """`docs` with `text` scrubbed and a per-document count column `pii_<type>` for each of `PII_TYPES`."""
    others = [c for c in docs.columns if c != "text"]
    # Made at call time, not import: a UDF made before a Spark Connect session exists is a classic one.
    scrubbed = F.pandas_udf(_scrub_batch, _SCRUBBED)("text")
    return docs.select(*others, scrubbed.alias("p")).select(*others, "p.*")


def pii_totals(scrubbed: DataFrame) -> dict[str, int]:
    """Replacements per PII type over the whole frame."""
    row = scrubbed.agg(*[F.coalesce(F.sum(f"pii_{t}"), F.lit(0)).alias(t) for t in PII_TYPES]).first()
    return {t: int(row[t]) for t in PII_TYPES}


def split_by_pii_density(scrubbed_df: DataFrame, max_pii_per_1k_chars: float,
                         min_pii: int = 2) -> tuple[DataFrame, DataFrame]:
    """(kept, rejected): documents above `max_pii_per_1k_chars` replacements per 1,000 characters of
    scrubbed text are rejected in the quarantine shape (step `curated_corpus`, rule `pii_density`).

    A document needs at least `min_pii` replacements to be rejected, so a short note with one e-mail
    address is not taken for a contact list.
    """
    total = sum((F.coalesce(F.col(c), F.lit(0)) for c in COUNT_COLUMNS), F.lit(0))
    density = total * F.lit(1000.0) / F.greatest(F.coalesce(F.length("text"), F.lit(0)), F.lit(1))
    dense = (total >= min_pii) & (density > F.lit(float(max_pii_per_1k_chars)))
    flagged = scrubbed_df.withColumn("_pii_dense", dense).withColumn("_pii_density", density)
    kept = flagged.filter(~F.col("_pii_dense")).drop("_pii_dense", "_pii_density")
    reason = F.format_string(f"pii density %.1f per 1k chars > max {max_pii_per_1k_chars:g}", F.col("_pii_density"))
    rejected = quarantine_rows(flagged.filter(F.col("_pii_dense")), "curated_corpus", F.lit("pii_density"), reason)
    return kept, rejected
