"""Final-answer extraction and grading for GSM8K-style solutions.

`extract_answer(text)` returns a canonical number string or None. Policy, in order:

1. `####` marker, one rule for references and completions alike (`answer_line`): the
   answer line is the rest of the line after the FIRST `####`. GSM8K references have
   exactly one, so its first is also its final one, and GSM8K's own grader
   (`ANS_RE.search` in grade_school_math/dataset.py) reads the first match of both the
   reference and the sample; in model output, text after the first answer is usually a
   hallucinated continuation (a new "Q:"), so the first commitment counts. The answer
   is the first expression after the line's last `=`, or on the whole line if it has
   none (`#### 5*3=15` is 15). A `####` line without one gives None: the model
   committed to no number.
2. Otherwise the first "answer is N" / "answer: N" phrase (few-shot prompts use it),
   read like a `####` line: `the answer is 7 - 2 = 5` is 5.
3. Otherwise the last expression in the text.

An expression is one number, or numbers joined by `+ - * / ^ ** x × ÷` (with unary
signs and parentheses), on one line. Its value is the safe calculator's result
(`rewards.calculator.evaluate`), never a fragment of it: `16 - 3` is 13, `2^10` is 1024,
`x = 10**9` is 10**9, `1/2` is 0.5. One the calculator rejects gives None (graded wrong).

Numbers may carry `$`, a sign (`-` or unicode minus), thousands separators (`1,000`),
decimals (`0.5`, `.5`), an exponent (`1.5e3`, or superscript digits as a power: `10²`),
trailing units or periods (`18 dollars.`). A `%` after a lone number is a unit (`50%`
is 50, as in GSM8K's percentage answers); inside an expression it is the calculator's
percent (`50 * 20%` is 10). Digits from any Unicode decimal script (full-width `１８`,
Arabic-Indic `١٨`) are normalised to ASCII. A number with more than `MAX_DIGITS` digits
(its exponent counted, so `1e999999` is rejected, not read as 1), a result whose
numerator or denominator has more, and an expression longer than the calculator's limit
all give None, which also keeps Python's int-from-string limit out of reach.

Canonical form (`canonical`): exact `Fraction` value; integers print as `18`; values
whose reduced denominator has only factors 2 and 5 print as a decimal without trailing
zeros (`0.5`, `-2.25`); other values print as a reduced fraction (`1/3`). So `18`,
`18.0`, `$18.00` all become `18`, and `0.5` and `1/2` both become `0.5`.

All functions are total: any string in, no exception, and time linear in the input
(every regex is linear; the last-expression search scans a bounded window from the end).
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

from jaxrl_reason.rewards.calculator import MAX_EXPR_CHARS, evaluate

MAX_DIGITS = 64

_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
_FROM_SUPERSCRIPT = str.maketrans(_SUPERSCRIPTS, "0123456789")
_OPERATORS = "-−–+*/^×÷xX∗·"
_SP = r"[^\S\r\n]*"  # blanks within one line
# An unsigned number: optional "$", digits with well-formed thousands groups, optional
# decimals and exponent. No nested quantifiers, so matching is linear.
_UNSIGNED = r"\$?[^\S\r\n]?(?:\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_OPERAND = rf"{_UNSIGNED}[{_SUPERSCRIPTS}]*%?(?:{_SP}\))*"
_OPERATOR = rf"(?:\*\*|[{re.escape(_OPERATORS)}])"
# Optional sign (not after a word char or closing bracket, so "16-3" is not "-3"), then
# operands joined by operators. Every repetition starts with an operator character,
# which neither a blank nor an operand can start with, so matching stays linear.
_EXPRESSION = re.compile(
    rf"(?:(?<![\w)\]])[-−])?{_OPERAND}"
    rf"(?:{_SP}{_OPERATOR}{_SP}(?:[-−+]{_SP})?(?:\({_SP})*{_OPERAND})*"
)
_PIECE = re.compile(
    rf"(?P<num>{_UNSIGNED})|(?P<sup>[{_SUPERSCRIPTS}]+)|(?P<op>{_OPERATOR})|(?P<other>[()%])|\s+"
)
_PARTS = re.compile(
    r"\$?\s?(?P<int>\d+(?:,\d{3})*)?(?:\.(?P<dec>\d+))?(?:[eE](?P<exp>[-+]?\d{1,8}))?"
)
_ANSWER_PHRASE = re.compile(
    r"answer\s{0,4}(?:is|was|:|=)[\s:=*$]{0,8}(?=[-−\d.(])", flags=re.IGNORECASE
)
_NO_SIGN_AFTER = re.compile(r"[\w)\]]")  # a "-" after these is an operator, not a sign
_ANSWER = re.compile(rf"(?P<sign>[-−])?(?P<num>{_UNSIGNED})")
_DIGIT = re.compile(r"\d")
_TAIL_WINDOW = 2 * MAX_EXPR_CHARS + 16
_TOO_BIG = 10**MAX_DIGITS


def _ascii_digits(s: str) -> str:
    if s.isascii():
        return s
    return "".join(str(unicodedata.decimal(c, c)) if not c.isascii() else c for c in s)


def _number(token: str) -> Fraction | None:
    """Exact value of one unsigned number token, or None if it is too long."""
    m = _PARTS.fullmatch(_ascii_digits(token))
    if m is None:
        return None
    integer = (m.group("int") or "").replace(",", "")
    decimals = m.group("dec") or ""
    exponent = int(m.group("exp") or "0")
    if len(integer) + len(decimals) + abs(exponent) > MAX_DIGITS or not (integer or decimals):
        return None
    digits, scale = int(integer + decimals), exponent - len(decimals)
    return Fraction(digits * 10**scale) if scale >= 0 else Fraction(digits, 10**-scale)


def _balanced(expr: str) -> str:
    """`expr` without unmatched leading "(" or trailing ")" (prose brackets)."""
    depth = lowest = 0
    for c in expr:
        if c in "()":
            depth += 1 if c == "(" else -1
            lowest = min(lowest, depth)
    expr = expr.strip()
    for _ in range(-lowest):
        if not expr.endswith(")"):
            return expr
        expr = expr[:-1].rstrip()
    for _ in range(depth - lowest):
        if not expr.startswith("("):
            return expr
        expr = expr[1:].lstrip()
    return expr


def _expression_value(span: str) -> Fraction | None:
    """The value of a matched expression: its one number, or the calculator's result."""
    if len(span) > MAX_EXPR_CHARS:
        return None  # also keeps hostile megabyte expressions cheap
    pieces, numbers, negative, arithmetic = [], [], False, False
    for m in _PIECE.finditer(span):
        kind, text = m.lastgroup, m.group(0)
        if kind == "num":
            value = _number(text)
            if value is None:
                return None
            numbers.append(value)
            pieces.append(canonical(value))
        elif kind == "sup":
            arithmetic = True
            pieces.append("**" + text.translate(_FROM_SUPERSCRIPT))
        elif kind == "op":
            negative = negative != (text in "-−–")
            pieces.append(text)
        elif kind == "other":
            pieces.append(text)
    if len(numbers) == 1 and not arithmetic:  # a lone number, perhaps signed or in "( )"
        return -numbers[0] if negative else numbers[0]
    value = evaluate(_balanced("".join(pieces)))
    if value is None or abs(value.numerator) >= _TOO_BIG or value.denominator >= _TOO_BIG:
        return None
    return value


def _widen(text: str, start: int, floor: int) -> int:
    """Where an expression matched at `start` really begins: before its "(" and a sign."""
    i = begin = start
    while i > floor and start - i <= MAX_EXPR_CHARS:
        c = text[i - 1]
        if c == "(":
            begin = i - 1
        elif c in "-−":
            if text[begin] not in "-−" and (i - 1 == 0 or not _NO_SIGN_AFTER.match(text[i - 2])):
                begin = i - 1
            break
        elif c not in " \t":
            break
        i -= 1
    return begin


def _first_expression(text: str) -> Fraction | None:
    # An expression starts at most 3 characters ("-$ ") before its first digit; find
    # that digit at C speed and match only a bounded stretch from there.
    digit = _DIGIT.search(text)
    if digit is None:
        return None
    stop = min(len(text), digit.start() + MAX_EXPR_CHARS + 1)
    m = _EXPRESSION.search(text, max(0, digit.start() - 3), stop)
    if m is None:
        return None
    return _expression_value(text[_widen(text, m.start(), 0) : m.end()])


def _continues_left(text: str, begin: int, floor: int) -> bool:
    """Whether an operand and operator stand just before `begin` (a cut expression)."""
    i = begin
    while i > floor and text[i - 1] in " \t":
        i -= 1
    if i <= floor:
        return floor > 0
    if text[i - 1] not in _OPERATORS:
        return False
    while i > floor and (text[i - 1] in _OPERATORS or text[i - 1] in " \t"):
        i -= 1
    if i <= floor:
        return floor > 0
    return text[i - 1].isdigit() or text[i - 1] in ")%" + _SUPERSCRIPTS


def _last_expression(text: str) -> Fraction | None:
    # Find the last digit by searching the reversed text (C speed), then parse only a
    # bounded window around it: an expression longer than the window is too long anyway.
    m = _DIGIT.search(text[::-1])
    if m is None:
        return None
    end = len(text) - m.start()
    start = max(0, end - _TAIL_WINDOW)
    last = None
    for last in _EXPRESSION.finditer(text, start, min(len(text), end + MAX_EXPR_CHARS)):  # noqa: B007
        pass
    if last is None:
        return None
    begin = _widen(text, last.start(), start)
    if (begin == start and start > 0) or _continues_left(text, begin, start):
        return None  # the window cut the expression: it is too long, or a fragment
    return _expression_value(text[begin : last.end()])


def _line_value(line: str) -> Fraction | None:
    """The answer on a `####` or "answer is" line: the first expression after its last `=`."""
    return _first_expression(line[line.rfind("=") + 1 :])


def answer_line(text: str) -> str | None:
    """The rest of the line after the first `####` of `text`, or None if it has none."""
    if not isinstance(text, str):
        return None
    marker = text.find("####")
    if marker < 0:
        return None
    line_end = text.find("\n", marker)
    return text[marker + 4 : line_end if line_end >= 0 else len(text)]


def extract_value(text: str) -> Fraction | None:
    """The exact final-answer value of a solution or completion (None if none)."""
    if not isinstance(text, str):
        return None
    line = answer_line(text)
    if line is not None:
        return _line_value(line)
    phrase = _ANSWER_PHRASE.search(text)
    if phrase is not None:
        line_end = text.find("\n", phrase.end())
        value = _line_value(text[phrase.end() : line_end if line_end >= 0 else len(text)])
        if value is not None:
            return value
    return _last_expression(text)


def extract_answer(text: str) -> str | None:
    """The canonical final-answer string of `text`, or None (see module docstring)."""
    value = extract_value(text)
    return None if value is None else canonical(value)


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


def parse_number(text: str | None) -> Fraction | None:
    """Exact value of the first expression in `text` (e.g. a canonical answer, `$1,000`)."""
    if not isinstance(text, str):
        return None
    return _first_expression(text)


def parse_answer(text: str | None) -> Fraction | None:
    """Exact value of `text` when it is exactly one number (`18`, `-2.5`, `$1,000`), else None.

    Gold answers must be this strict: `twelve`, `inf`, `18 apples` or `1e999999` are not.
    """
    m = _ANSWER.fullmatch(text.strip()) if isinstance(text, str) else None
    value = None if m is None else _number(m.group("num"))
    return -value if value is not None and m.group("sign") else value


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
