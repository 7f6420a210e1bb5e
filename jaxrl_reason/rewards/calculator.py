"""A safe calculator for GSM8K-style annotations `<<expr=result>>`.

`evaluate` is a small hand-written recursive-descent parser over exact rationals
(`fractions.Fraction`). It never calls `eval` and accepts only numbers, `+ - * /`
(also `x`, `×`, `÷`, unicode minus), parentheses, unary signs, powers (`**` or `^`)
and a postfix percent (`50%` means 0.5). Anything else gives `None`.

Resource bounds keep it total on hostile input (model samples can contain anything):
the input is at most `MAX_EXPR_CHARS` characters, nesting at most `MAX_DEPTH`, an
exponent must be an integer with absolute value at most `MAX_EXPONENT`, and every
intermediate numerator and denominator stays under `MAX_BITS` bits (checked *before*
a power is computed, so `9**9**9` returns `None` without allocating).

Grammar (Python precedence; `**` is right-associative and binds tighter than a
unary sign on its left, so `-2**2 == -4` and `2**-1 == 1/2`)::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/') unary)*
    unary   := ('+' | '-') unary | power
    power   := postfix ('**' unary)?
    postfix := primary '%'*
    primary := NUMBER | '(' expr ')'
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_EXPR_CHARS = 256
MAX_DEPTH = 64
MAX_EXPONENT = 64
MAX_BITS = 4096

# Thousands separators are accepted only in well-formed groups (1,000 but not 1,00).
_NUMBER = re.compile(r"(?:[0-9]+(?:,[0-9]{3}(?![0-9]))*(?:\.[0-9]*)?|\.[0-9]+)")
_TRANSLATE = str.maketrans(
    {"×": "*", "x": "*", "X": "*", "∗": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "^": "**"}
)
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


class _Reject(Exception):
    """Internal signal: the expression is not acceptable."""


def _check(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _Reject
    return value


def _tokenize(text: str) -> list[str | Fraction]:
    tokens: list[str | Fraction] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "0123456789.":
            m = _NUMBER.match(text, i)
            if m is None:
                raise _Reject
            tokens.append(Fraction(m.group(0).replace(",", "")))
            i = m.end()
        elif text.startswith("**", i):
            tokens.append("**")
            i += 2
        elif c in "+-*/()%":
            tokens.append(c)
            i += 1
        else:
            raise _Reject
    return tokens


class _Parser:
    def __init__(self, tokens: list[str | Fraction]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | Fraction | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | Fraction | None:
        tok = self.peek()
        self.pos += 1
        return tok

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = _check(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.unary()
            if op == "*":
                value = _check(value * rhs)
            else:
                if rhs == 0:
                    raise _Reject
                value = _check(value / rhs)
        return value

    def unary(self) -> Fraction:
        if self.peek() in ("+", "-"):
            self.enter()
            op = self.take()
            value = self.unary()
            self.depth -= 1
            return -value if op == "-" else value
        return self.power()

    def power(self) -> Fraction:
        base = self.postfix()
        if self.peek() != "**":
            return base
        self.take()
        self.enter()
        exponent = self.unary()
        self.depth -= 1
        return _power(base, exponent)

    def postfix(self) -> Fraction:
        value = self.primary()
        while self.peek() == "%":
            self.take()
            value = _check(value / 100)
        return value

    def primary(self) -> Fraction:
        tok = self.take()
        if isinstance(tok, Fraction):
            return tok
        if tok == "(":
            self.enter()
            value = self.expr()
            if self.take() != ")":
                raise _Reject
            self.depth -= 1
            return value
        raise _Reject


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
        raise _Reject
    e = int(exponent)
    if base == 0 and e < 0:
        raise _Reject
    # Estimate the size before computing so huge powers are never materialised.
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(e) > MAX_BITS:
        raise _Reject
    return _check(base**e)


def evaluate(expr: str) -> Fraction | None:
    """Evaluates an arithmetic expression exactly; returns None if it is not one.

    Total: never raises and runs in time bounded by the input limits.
    """
    try:
        if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
            return None
        tokens = _tokenize(expr.translate(_TRANSLATE))
        if not tokens:
            return None
        parser = _Parser(tokens)
        value = parser.expr()
        if parser.pos != len(tokens):
            return None
        return value
    except (_Reject, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def find_annotations(text: str) -> list[tuple[str, str, int]]:
    """Finds calculator annotations `<<expr=result>>` in `text`.

    Returns `(expr, stated_result, end)` per annotation, where `end` is the character
    offset just past the closing `>>`. The regex is linear: its character classes
    exclude the delimiters, so no character is scanned by more than one attempt.
    """
    if not isinstance(text, str):
        return []
    return [(m.group(1), m.group(2), m.end()) for m in _ANNOTATION.finditer(text)]
