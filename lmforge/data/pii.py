"""PII detectors: patterns plus validators (Luhn, IBAN mod-97, Chinese resident-ID checksum, MRZ check digits...).

Each detector proposes candidate spans with a regular expression and keeps only those its validator accepts,
so that look-alikes (order numbers, dates, version strings) survive. Detectors run in priority order and a
later one never takes characters an earlier one already took.
"""
from __future__ import annotations

import bisect
import datetime
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

CJK = "\u3400-\u4dbf\u4e00-\u9fff"


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number carries."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_prefix_valid(digits: str) -> bool:
    """Issuer ranges of the major networks (Visa, Mastercard, Amex, Discover, JCB, UnionPay, Diners)."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    if two == 62:
        return 16 <= n <= 19
    if two in (36, 38) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19
    return False


IBAN_LENGTHS = {"AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24,
                "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28,
                "IE": 22, "IL": 23, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31,
                "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "TR": 26}


def iban_valid(text: str) -> bool:
    """ISO 13616: the country's length and the mod-97 check (the number with the first four moved last)."""
    code = re.sub(r"\s", "", text).upper()
    if IBAN_LENGTHS.get(code[:2]) != len(code):
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


CN_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def cn_id_check_char(first17: str) -> str:
    """GB 11643-1999 check character (ISO 7064 MOD 11-2) of the first 17 digits of a resident ID."""
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, CN_ID_WEIGHTS)) % 11]


def cn_id_valid(text: str) -> bool:
    """An 18-character Chinese resident ID: region code, a real birth date, and its check character."""
    code = text.upper()
    if code[0] not in "12345678":
        return False
    try:
        born = datetime.date(int(code[6:10]), int(code[10:12]), int(code[12:14]))
    except ValueError:
        return False
    if not 1900 <= born.year <= datetime.date.today().year:
        return False
    return cn_id_check_char(code[:17]) == code[17]


def mrz_check_digit(field: str) -> str:
    """ICAO 9303 check digit: weights 7, 3, 1 over digits, letters (A=10) and '<' (0)."""
    total = 0
    for index, char in enumerate(field):
        value = 0 if char == "<" else int(char, 36)
        total += value * (7, 3, 1)[index % 3]
    return str(total % 10)


def mrz_valid(line: str) -> bool:
    """Line 2 of a passport's machine-readable zone: document number, birth and expiry dates with check digits."""
    return (mrz_check_digit(line[0:9]) == line[9] and mrz_check_digit(line[13:19]) == line[19]
            and mrz_check_digit(line[21:27]) == line[27])


def ipv4_valid(text: str, context: str) -> bool:
    """Four octets 0-255 that do not read as a version number ('v1.2.3.4', 'version 10.0.19041.1', '版本')."""
    parts = text.split(".")
    if any(len(p) > 1 and p[0] == "0" for p in parts) or any(int(p) > 255 for p in parts):
        return False
    return not re.search(r"(?:\bv|version|ver\.|release|build|版本|版)\s*$", context, re.IGNORECASE)


def ipv6_valid(text: str) -> bool:
    """An IPv6 address the standard library accepts, with at least two groups of letters or digits (not '::')."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return len([g for g in text.split(":") if g]) >= 3


def phone_valid(text: str) -> bool:
    """8 to 15 digits (E.164), not a date or a time written with separators."""
    digits = re.sub(r"\D", "", text)
    return 8 <= len(digits) <= 15


def ssn_valid(text: str) -> bool:
    """US social security number structure: area not 000, 666 or 9xx; group and serial not zero."""
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def entropy_bits(text: str) -> float:
    """Shannon entropy per character: secrets are random, ordinary identifiers are not."""
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def secret_assignment_valid(match: re.Match) -> bool:
    value = match.group("value")
    return (len(value) >= 16 and entropy_bits(value) >= 3.5 and re.search(r"\d", value) is not None
            and re.search(r"[A-Za-z]", value) is not None)


@dataclass(frozen=True)
class Detector:
    """One PII type: a pattern, an optional validator, and which group of the match is the sensitive part."""

    kind: str
    pattern: re.Pattern
    validate: Callable[[re.Match, str], bool] | None = None
    group: str | int = 0


def _re(pattern: str, flags: int = 0) -> re.Pattern:
    # ASCII: \w, \d and \b must not count Chinese characters as word characters, or '电话13812345678' hides its number
    return re.compile(pattern, flags | re.ASCII)


NOT_WORD_BEFORE = r"(?<![\w.\-+/@])"
NOT_WORD_AFTER = r"(?![\w\-@]|\.\w)"

DETECTORS: list[Detector] = [
    Detector("PRIVATE_KEY", _re(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)),
    Detector("URL_CREDENTIALS", _re(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://(?P<cred>[^\s:/@]+:[^\s/@]+)@[\w.\-]+"),
             group="cred"),
    Detector("SECRET", _re(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}"
                           r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}|\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}|\bAIza[0-9A-Za-z_\-]{35}"
                           r"|\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}|\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}")),
    Detector("SECRET", _re(r"(?i:api[_\-]?key|secret|token|passw(?:or)?d|pwd|密码|密钥|令牌)[\"']?\s*[:=：]\s*[\"']?"
                           r"(?P<value>[A-Za-z0-9/+_\-.=]{16,})"),
             lambda m, _: secret_assignment_valid(m), group="value"),
    Detector("EMAIL", _re(r"(?<![\w.+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@(?:[A-Za-z0-9\-]+\.)+[A-Za-z]{2,}(?![\w\-])")),
    Detector("IBAN", _re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), lambda m, _: iban_valid(m.group())),
    Detector("CN_RESIDENT_ID", _re(r"(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])"), lambda m, _: cn_id_valid(m.group())),
    Detector("PASSPORT_MRZ", _re(r"(?<![A-Z0-9<])[A-Z0-9<]{9}\d[A-Z<]{3}\d{6}\d[MFX<]\d{6}\d[A-Z0-9<]{14}\d\d(?![A-Z0-9<])"),
             lambda m, _: mrz_valid(m.group())),
    # 13-19 digits, compact or in groups with one separator kind (4-4-4-4[-3], Amex 4-6-5): a looser pattern
    # would swallow a neighbouring number ("13912345678 4111...") and hide the card inside it
    Detector("CREDIT_CARD", _re(r"(?<![\d\-])(?:\d{4}([ \-]?)\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?|\d{4}([ \-]?)\d{6}\2\d{4,5})"
                                r"(?![\d\-])"),
             lambda m, _: (lambda d: card_prefix_valid(d) and luhn_valid(d))(re.sub(r"\D", "", m.group()))),
    Detector("US_SSN", _re(r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])"), lambda m, _: ssn_valid(m.group())),
    Detector("IP_ADDRESS", _re(NOT_WORD_BEFORE + r"(?:\d{1,3}\.){3}\d{1,3}" + NOT_WORD_AFTER),
             lambda m, text: ipv4_valid(m.group(), text[max(0, m.start() - 12):m.start()])),
    Detector("IP_ADDRESS", _re(r"(?<![\w:])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{4,39}(?![\w:])"),
             lambda m, _: ipv6_valid(m.group())),
    # Chinese mobiles: 1[3-9] and 9 more digits, optionally +86 and separators as 3-4-4
    Detector("PHONE", _re(r"(?<![\d\w+])(?:(?:\+|00)86[ \-]?)?1[3-9]\d(?:[ \-]?\d{4}){2}(?!\d)")),
    # international with a +country code, or North American (xxx) xxx-xxxx / xxx-xxx-xxxx / xxx.xxx.xxxx
    Detector("PHONE", _re(r"(?<![\w+])\+\d{1,3}(?:[ \-.]?\(?\d{1,4}\)?){1,5}(?!\d)"), lambda m, _: phone_valid(m.group())),
    Detector("PHONE", _re(r"(?<![\w\-.])(?:\(\d{3}\) ?|\d{3}[\-. ])\d{3}[\-. ]\d{4}(?![\w\-]|\.\d)")),
    # Chinese landlines with an area code: 010-12345678, 0755-1234567
    Detector("PHONE", _re(r"(?<![\d\-])0\d{2,3}-\d{7,8}(?![\d\-])")),
]

KINDS = sorted({d.kind for d in DETECTORS})


def find_pii(text: str, kinds: set[str] | None = None) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans of PII in `text`, sorted by start."""
    starts: list[int] = []  # accepted spans, kept sorted by start (they never overlap)
    taken: list[tuple[int, int, str]] = []
    for detector in DETECTORS:
        if kinds is not None and detector.kind not in kinds:
            continue
        for match in detector.pattern.finditer(text):
            if detector.validate is not None and not detector.validate(match, text):
                continue
            start, end = match.span(detector.group)
            at = bisect.bisect_left(starts, start)
            if (at < len(taken) and taken[at][0] < end) or (at > 0 and taken[at - 1][1] > start):
                continue
            starts.insert(at, start)
            taken.insert(at, (start, end, detector.kind))
    return taken
