"""The trusted side's comparison of a program's outputs (plain values, ``_codec.decode``d) with the expected ones.

Type rules of ``same_value(got, expected)``:

- the type must be exactly the expected one: ``bool`` is not ``int`` (``True`` does not match ``1``), a list is not a
  tuple, ``None`` matches only ``None``; subclasses never get here (``_codec`` refuses them);
- the one widening: an ``int`` matches an expected ``float`` (compared as a float), never the other way round;
- floats match within ``FLOAT_REL_TOL`` relative or ``FLOAT_ABS_TOL`` absolute (``math.isclose``); infinities match
  themselves, NaN matches nothing (as with ``==``);
- lists and tuples element by element, dicts by key (keys matched by value and exact type) then value, sets and
  frozensets as sets of (type, value).

A test's own tolerance (``abs(candidate(x) - y) < 1e-6``, ``math.isclose(...)``) is applied as written instead
(``case_holds``), to a real number (``int`` or ``float``, not ``bool``).
"""

from __future__ import annotations

import math
from typing import Any

FLOAT_REL_TOL = 1e-9
FLOAT_ABS_TOL = 1e-9
"""Floats in an ``==`` test match when ``|got - expected| <= max(1e-9 |expected|, 1e-9)``: as strict as ``==`` up
to the last few bits, so a solution that sums in another order still passes."""

_POST = {"tuple": tuple, "list": list, "sorted": sorted, "set": set, "frozenset": frozenset}


def _is_real(x: Any) -> bool:
    return type(x) is int or type(x) is float


def same_value(got: Any, expected: Any) -> bool:
    """Strict by-value equality of two plain values (the module doc's type rules)."""
    te = type(expected)
    if te is float:
        if not _is_real(got):
            return False
        try:
            return math.isclose(float(got), expected, rel_tol=FLOAT_REL_TOL, abs_tol=FLOAT_ABS_TOL)
        except OverflowError:  # an int too large for a float
            return False
    if type(got) is not te:
        return False
    if te is list or te is tuple:
        return len(got) == len(expected) and all(same_value(g, e) for g, e in zip(got, expected))
    if te is dict:
        if len(got) != len(expected):
            return False
        keys = {(type(k), k): k for k in got}
        return all((type(k), k) in keys and same_value(got[keys[(type(k), k)]], v) for k, v in expected.items())
    if te is set or te is frozenset:
        return {(type(x), x) for x in got} == {(type(x), x) for x in expected}
    return got == expected  # None, bool, int, str: same type already


def apply_post(value: Any, post: str | None) -> Any:
    """The wrapper a test applies to the output (``tuple(candidate(x))``); ``ValueError`` where Python would raise."""
    if post is None:
        return value
    try:
        return _POST[post](value)
    except TypeError as e:
        raise ValueError(f"{post}() of the output failed: {e}") from None


def case_holds(kind: str, got: Any, expected: Any, tol: Any = None, post: str | None = None) -> bool:
    """Whether output ``got`` satisfies one case (``steer.verifiers.humaneval_check.Case``); ``bind`` is judged
    elsewhere (by replaying the test), so it holds here."""
    try:
        got = apply_post(got, post)
    except ValueError:
        return False
    if kind == "eq":
        return same_value(got, expected)
    if kind in ("runs", "bind"):
        return True
    if not (_is_real(got) and _is_real(expected)):
        return False
    try:
        if kind == "abs_lt":
            return abs(got - expected) < tol
        if kind == "abs_le":
            return abs(got - expected) <= tol
        if kind == "isclose":
            return math.isclose(got, expected, rel_tol=tol[0], abs_tol=tol[1])
    except OverflowError:  # an int too large for a float
        return False
    raise KeyError(f"unknown case kind {kind!r}; valid kinds: eq, runs, bind, abs_lt, abs_le, isclose")
