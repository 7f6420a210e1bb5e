"""Final-answer extraction and grading for GSM8K-style solutions.

`extract_answer(text)` returns a canonical number string or None. Policy, in order:

1. `####` marker: the FIRST `####` in the text. References have exactly one; in model
   output, text after the first answer is usually a hallucinated continuation (a new
   "Q:"), so the first commitment counts. The answer is the first number on the rest
   of that line, or the number after the line's last `=` if it has one (`#### 5*3=15`).
   A `####` line without a number gives None: the model committed to no number.
2. Otherwise the first "answer is N" / "answer: N" phrase (few-shot prompts use it).
3. Otherwise the last number in the text.

Numbers may carry `$`, a sign (`-` or unicode minus), thousands separators (`1,000`),
decimals (`0.5`, `.5`), a fraction (`1/2`), trailing units or periods (`18 dollars.`).
Digits from any Unicode decimal script (full-width `１８`, Arabic-Indic `١٨`) are
normalised to ASCII. Numbers with more than `MAX_DIGITS` digits are rejected (None),
which also keeps Python's int-from-string limit out of reach.

Canonical form (`canonical`): exact `Fraction` value; integers print as `18`; values
whose reduced denominator has only factors 2 and 5 print as a decimal without trailing
zeros (`0.5`, `-2.25`); other values print as a reduced fraction (`1/3`). So `18`,
`18.0`, `$18.00` all become `18`, and `0.5` and `1/2` both become `0.5`.

All functions are total: any string in, no exception, and time linear in the input
(every regex is linear; the last-number search scans a bounded window from the end).
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

MAX_DIGITS = 64

# Optional sign (not after a word char or closing bracket, so "16-3" is not "-3"),
# optional "$", digits with well-formed thousands groups, optional decimals and
# "/denominator". No nested quantifiers, so matching is linear.
_NUMBER = re.compile(
    r"(?:(?<![\w)\]])[-−])?\$?\s?(?:\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)(?:/\d+)?"
)
_PARTS = re.compile(
    r"(?P<sign>[-−])?\$?\s?(?P<int>\d+(?:,\d{3})*)?(?:\.(?P<dec>\d+))?(?:/(?P<den>\d+))?"
)
_ANSWER_PHRASE = re.compile(
    r"answer\s{0,4}(?:is|was|:|=)[\s:=*$]{0,8}(?=[-−\d.])", flags=re.IGNORECASE
)
_DIGIT = re.compile(r"\d")
_TAIL_WINDOW = 4 * MAX_DIGITS + 16


def _ascii_digits(s: str) -> str:
    if s.isascii():
        return s
    return "".join(str(unicodedata.decimal(c, c)) if not c.isascii() else c for c in s)


def _value(token: str) -> Fraction | None:
    """Exact value of one matched number token, or None if it is too long."""
    m = _PARTS.fullmatch(_ascii_digits(token))
    if m is None:
        return None
    integer = (m.group("int") or "").replace(",", "")
    decimals = m.group("dec") or ""
    den = m.group("den")
    if len(integer) + len(decimals) + len(den or "") > MAX_DIGITS or not (integer or decimals):
        return None
    value = Fraction(int(integer or "0") * 10 ** len(decimals) + int(decimals or "0"))
    value /= 10 ** len(decimals)
    if den is not None:
        if int(den) == 0:
            return None
        value /= int(den)
    return -value if m.group("sign") else value


def canonical(value: Fraction) -> str:
    """The canonical answer string of an exact value (see module docstring)."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _first_number(text: str) -> Fraction | None:
    m = _NUMBER.search(text)
    return None if m is None else _value(m.group(0))


def _last_number(text: str) -> Fraction | None:
    # Find the last digit by searching the reversed text (C speed), then parse only a
    # bounded window around it: a number longer than the window is too long anyway.
    m = _DIGIT.search(text[::-1])
    if m is None:
        return None
    end = len(text) - m.start()
    start = max(0, end - _TAIL_WINDOW)
    last = None
    for last in _NUMBER.finditer(text, start, end):  # noqa: B007
        pass
    if last is None or (last.start() == start and start > 0):
        return None
    return _value(last.group(0))


def extract_value(text: str) -> Fraction | None:
    """The exact final-answer value of a solution or completion (None if none)."""
    if not isinstance(text, str):
        return None
    marker = text.find("####")
    if marker >= 0:
        line_end = text.find("\n", marker)
        line = text[marker + 4 : line_end if line_end >= 0 else len(text)]
        eq = line.rfind("=")
        return _first_number(line[eq + 1 :] if eq >= 0 else line)
    phrase = _ANSWER_PHRASE.search(text)
    if phrase is not None:
        line_end = text.find("\n", phrase.end())
        value = _first_number(text[phrase.end() : line_end if line_end >= 0 else len(text)])
        if value is not None:
            return value
    return _last_number(text)


def extract_answer(text: str) -> str | None:
    """The canonical final-answer string of `text`, or None (see module docstring)."""
    value = extract_value(text)
    return None if value is None else canonical(value)


def parse_number(text: str | None) -> Fraction | None:
    """Exact value of the first number in `text` (e.g. a canonical answer or `$1,000`)."""
    if not isinstance(text, str):
        return None
    try:
        return _first_number(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_equal(a: str | None, b: str | None) -> bool:
    """Whether two answer strings denote the same number (`18 == 18.0 == $18.00`)."""
    va, vb = parse_number(a), parse_number(b)
    return va is not None and vb is not None and va == vb


def is_correct(completion: str, reference: str) -> bool:
    """Whether `completion`'s final answer equals `reference`'s.

    `reference` is a GSM8K-style solution ending in `#### N` or a bare number.
    """
    predicted, expected = extract_value(completion), extract_value(reference)
    return predicted is not None and expected is not None and predicted == expected
