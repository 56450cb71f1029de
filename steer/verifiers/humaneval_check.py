"""HumanEval ``check(candidate)`` harnesses as (input, expected) cases that a trusted process judges.

A HumanEval test is code (``assert candidate(x) == y``): run in the candidate's process, a candidate can make it pass
without being right (an object whose ``__eq__`` is always True, a patched ``json`` or builtin, a stack walk to the
harness's data). Here the ``check`` body is parsed with ``ast`` and each use of ``candidate`` is rewritten:

==============================================================  ===========================================
assert in ``check``                                              case (the host compares, ``values.py``)
==============================================================  ===========================================
``candidate(A) == E``, ``E == candidate(A)``, ``candidate(A) is E``  ``eq``: strict by-value equality with E
``W(candidate(A)) == E``, W one of tuple/list/sorted/set/frozenset  ``eq`` on ``W(output)`` (``Case.post``)
``W(candidate(A)) == W(entry_point(A))`` (HumanEval/33)          ``runs``: the test compares the candidate
                                                                 with itself; only a plain output is needed
``candidate(A)`` / ``not candidate(A)``                          ``eq`` with ``True`` / ``False``
``abs(candidate(A) - E) < T`` (``<=``, ``math.fabs``, E first)   ``abs_lt`` / ``abs_le``: a real number within T
``math.isclose(candidate(A), E, rel_tol=R, abs_tol=T)``          ``isclose`` with the test's R and T
``X = candidate(A)``, later asserts over ``X`` (HumanEval/32)    ``bind``: the asserts rerun in a trusted
                                                                 process on the output (``_check_replay``)
==============================================================  ===========================================

Other statements (imports, loops, assignments, asserts that do not involve the candidate) are kept: the rewritten
test runs in a sandbox with no candidate code (``_check_replay.py``, ``record`` mode) and reports every call's
inputs and expected value, which ``A``, ``E`` and ``T`` evaluate to there. Any other use of ``candidate`` (passed
along, called inside a comprehension of an assert, compared with ``<``) raises ``UnsupportedCheck``; the caller
may then fall back to running the original check in the sandbox (``steer.verifiers.code``).

All 164 HumanEval problems rewrite: 162 use ``eq`` cases, 2 ``abs_lt``, HumanEval/32 ``bind``, HumanEval/33 ``runs``
(``tests/test_verdict_integrity.py``; docs/verifiers.md).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any


class UnsupportedCheck(ValueError):
    """A ``check`` body uses ``candidate`` in a shape that cannot be judged outside the candidate's process."""


@dataclass(frozen=True)
class Case:
    """One call of the candidate and what its output must be (``kind``: eq, abs_lt, abs_le, isclose or bind)."""

    kind: str
    args: list[Any]
    kwargs: dict[str, Any]
    expected: Any = None
    tol: Any = None  # abs_*: the bound T; isclose: [rel_tol, abs_tol]
    post: str | None = None  # a wrapper the test applies to the output first (``tuple(candidate(A)) == E``)


def _is_candidate_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate"


def _uses_candidate(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(node))


def _uses_names(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _is_abs(func: ast.AST) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("abs", "fabs")
    return isinstance(func, ast.Attribute) and func.attr == "fabs" and isinstance(func.value, ast.Name)


def _is_isclose(func: ast.AST) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "isclose"
    return isinstance(func, ast.Attribute) and func.attr == "isclose" and isinstance(func.value, ast.Name)


_WRAPPERS = ("tuple", "list", "sorted", "set", "frozenset")  # applied by the host to the output (``Case.post``)


def _candidate_side(node: ast.AST) -> tuple[ast.Call, str | None] | None:
    """(the candidate call, wrapper name or None) for ``candidate(A)`` or ``W(candidate(A))``, W in ``_WRAPPERS``."""
    if _is_candidate_call(node):
        return node, None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _WRAPPERS
        and len(node.args) == 1
        and not node.keywords
        and _is_candidate_call(node.args[0])
    ):
        return node.args[0], node.func.id
    return None


def _split(a: ast.AST, b: ast.AST) -> tuple[ast.Call, str | None, ast.AST] | None:
    """(candidate call, wrapper, the other side) when exactly one of ``a``, ``b`` is a candidate side."""
    for side, other in ((a, b), (b, a)):
        if (found := _candidate_side(side)) and not _uses_candidate(other):
            return found[0], found[1], other
    return None


def _is_self_comparison(call: ast.Call, post: str | None, other: ast.AST, entry_point: str) -> bool:
    """``W(candidate(A)) == W(entry_point(A))``: the test compares the candidate with itself (HumanEval/33)."""
    renamed = ast.Call(ast.Name(entry_point, ast.Load()), call.args, call.keywords)
    mine = ast.Call(ast.Name(post, ast.Load()), [renamed], []) if post else renamed
    return ast.dump(mine) == ast.dump(other)


def _case_of(test: ast.AST, entry_point: str) -> tuple[str, ast.Call, str | None, ast.AST, ast.AST] | None:
    """(kind, candidate call, wrapper, expected expr, tol expr) for the assert shapes of the module doc, else None."""
    true, false, none = ast.Constant(True), ast.Constant(False), ast.Constant(None)
    if _is_candidate_call(test):
        return "eq", test, None, true, none
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_candidate_call(test.operand):
        return "eq", test.operand, None, false, none
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        op, left, right = test.ops[0], test.left, test.comparators[0]
        if isinstance(op, (ast.Eq, ast.Is)) and (found := _split(left, right)):
            call, post, other = found
            if _is_self_comparison(call, post, other, entry_point):
                return "runs", call, post, none, none
            return "eq", call, post, other, none
        if (
            isinstance(op, (ast.Lt, ast.LtE))
            and isinstance(left, ast.Call)
            and _is_abs(left.func)
            and len(left.args) == 1
            and not left.keywords
            and isinstance(left.args[0], ast.BinOp)
            and isinstance(left.args[0].op, ast.Sub)
            and not _uses_candidate(right)
            and (found := _split(left.args[0].left, left.args[0].right))
            and found[1] is None
        ):
            return ("abs_lt" if isinstance(op, ast.Lt) else "abs_le"), found[0], None, found[2], right
    if isinstance(test, ast.Call) and _is_isclose(test.func) and len(test.args) == 2:
        kw = {k.arg: k.value for k in test.keywords}
        if set(kw) <= {"rel_tol", "abs_tol"} and not any(map(_uses_candidate, kw.values())):
            if (found := _split(*test.args)) and found[1] is None:
                tol = ast.List([kw.get("rel_tol", ast.Constant(1e-9)), kw.get("abs_tol", ast.Constant(0.0))])
                return "isclose", found[0], None, found[2], tol
    return None


def _call_args(call: ast.Call) -> tuple[ast.expr, ast.expr]:
    """The call's positional args as a tuple expression and its keyword args as a dict expression."""
    args = ast.Tuple(list(call.args), ast.Load())
    kwargs = ast.Dict([ast.Constant(k.arg) if k.arg else None for k in call.keywords], [k.value for k in call.keywords])
    return args, kwargs


class _Rewriter(ast.NodeTransformer):
    def __init__(self, entry_point: str):
        self.entry_point = entry_point
        self.bound: set[str] = set()  # names bound to a candidate output
        self.kinds: list[str] = []

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        if self.bound and _uses_names(node.test, self.bound) and not _uses_candidate(node.test):
            self.kinds.append("pred")
            pred = ast.Lambda(ast.arguments([], [], None, [], [], None, []), node.test)
            return ast.copy_location(ast.Expr(ast.Call(ast.Name("_steer_pred", ast.Load()), [pred], [])), node)
        shape = _case_of(node.test, self.entry_point)
        if shape is None:
            return node  # asserts not involving the candidate stay; any left-over use is refused below
        kind, call, post, expected, tol = shape
        self.kinds.append(kind)
        args, kwargs = _call_args(call)
        fn = ast.Name("_steer_case", ast.Load())
        case_args = [ast.Constant(kind), args, kwargs, expected, tol, ast.Constant(post)]
        return ast.copy_location(ast.Expr(ast.Call(fn, case_args, [])), node)

    def visit_Assign(self, node: ast.Assign) -> ast.stmt:
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and _is_candidate_call(node.value):
            self.bound.add(node.targets[0].id)
            self.kinds.append("bind")
            args, kwargs = _call_args(node.value)
            node.value = ast.Call(ast.Name("_steer_call", ast.Load()), [args, kwargs], [])
        return node


def rewrite_check(test: str, entry_point: str) -> tuple[str, list[str]]:
    """The test source with ``check``'s uses of ``candidate`` rewritten (module doc), and the case kinds in order.

    Raises ``UnsupportedCheck`` when ``check`` is missing or uses ``candidate`` (or a name bound to its output)
    in any other way.
    """
    try:
        tree = ast.parse(test)
    except SyntaxError as e:
        raise UnsupportedCheck(f"the test does not parse: {e}") from None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or [a.arg for a in checks[0].args.args] != ["candidate"]:
        raise UnsupportedCheck("the test must define exactly one `def check(candidate):`")
    rewriter = _Rewriter(entry_point)
    checks[0].body = [rewriter.visit(s) for s in checks[0].body]
    in_preds = {
        id(sub)
        for n in ast.walk(checks[0])
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "_steer_pred"
        for sub in ast.walk(n)
    }
    for node in ast.walk(checks[0]):
        if isinstance(node, ast.Name) and node.id == "candidate":
            raise UnsupportedCheck(
                f"check line {node.lineno}: candidate is used in a shape other than the module doc's"
            )
        if isinstance(node, ast.Name) and node.id in rewriter.bound and isinstance(node.ctx, ast.Load):
            if id(node) not in in_preds:
                raise UnsupportedCheck(f"check line {node.lineno}: the output {node.id!r} is used outside an assert")
    if not set(rewriter.kinds) - {"bind"}:
        raise UnsupportedCheck("check() holds no assert on the candidate's output")
    return ast.unparse(ast.fix_missing_locations(tree)), rewriter.kinds
