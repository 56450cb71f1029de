"""Trusted side of a HumanEval ``check``: run the problem's rewritten test with no candidate code, in a sandbox.

Run in the sandbox as the program itself, with ``steer/verifiers/_codec.py``'s text prepended. Stdin holds
``{"mode", "prompt", "test", "entry_point", "bound"}``: the problem's own prompt (trusted: its helper functions,
e.g. HumanEval/38's ``encode_cyclic``, with the entry point's stub body, which must not be called) and its ``test``
as rewritten by ``steer.verifiers.humaneval_check``, where every use of ``candidate`` became one of

- ``_steer_case(kind, args, kwargs, expected, tol, post)``: a call whose output the host compares with ``expected``;
- ``_steer_call(args, kwargs)``: a call whose output is bound to a name (HumanEval/32's ``solution = candidate(...)``);
- ``_steer_pred(lambda: test)``: an assert over such a name.

``mode == "record"``: write one line per call to fd 3, ``[kind, args, kwargs, expected, tol, post]`` (encoded):
the inputs the candidate will be called on and what each output must be. ``mode == "judge"``: replay the test with
``_steer_call`` returning the candidate's recorded outputs (``bound``: call index -> encoded output, already
validated by the host) and evaluate each ``_steer_pred``; write the same lines, then ``"pass"`` if all held.
``random`` is seeded the same in both modes, so a test that draws random inputs (HumanEval/53) makes the same calls
twice.
"""

import json as _json
import os as _os
import random as _random
import sys as _sys

_CHANNEL_FD = 3


def _entry_point_called(*args, **kwargs):
    raise RuntimeError("the test calls the entry point by name; only check(candidate)'s calls can be judged")


def _steer_main():
    spec = _json.loads(_sys.stdin.read())
    judging = spec["mode"] == "judge"
    bound = {int(k): decode(v) for k, v in spec.get("bound", {}).items()}  # noqa: F821 - from _codec.py
    calls = []

    def _steer_case(kind, args, kwargs, expected, tol, post):
        calls.append([kind, encode(list(args)), encode(kwargs), encode(expected), encode(tol), post])  # noqa: F821

    def _steer_call(args, kwargs):
        calls.append(["bind", encode(list(args)), encode(kwargs), None, None, None])  # noqa: F821
        return bound.get(len(calls) - 1) if judging else None

    def _steer_pred(test):
        if judging and not test():
            raise AssertionError("a check over the candidate's output failed")

    g = {"__name__": "__steer_check__", "_steer_case": _steer_case, "_steer_call": _steer_call}
    g["_steer_pred"] = _steer_pred
    _random.seed(0)
    try:
        exec(compile(spec["prompt"], "prompt.py", "exec"), g)
    except SyntaxError:  # a prompt that ends on the entry point's bare ``def`` line
        exec(compile(spec["prompt"] + "    pass\n", "prompt.py", "exec"), g)
    g[spec["entry_point"]] = _entry_point_called  # the prompt's stub must not stand in for the candidate
    exec(compile(spec["test"], "test.py", "exec"), g)
    g["check"](None)
    lines = [_json.dumps(c) for c in calls] + (["pass"] if judging else [])
    _os.write(_CHANNEL_FD, "".join(line + "\n" for line in lines).encode())


_steer_main()
