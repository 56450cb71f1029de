"""The code verifier on well-behaved programs: sandbox I/O and statuses, code extraction, the three test kinds."""

from __future__ import annotations

import os
import time

import pytest

from steer.verifiers import VERIFIERS
from steer.verifiers.code import (
    CodeScorer,
    _outputs_match,
    extract_code,
    humaneval_source,
    run_code_tests,
    verify_code,
)
from steer.verifiers.sandbox import Limits, isolation, run_program

pytestmark = pytest.mark.unit

FAST = Limits(wall_s=5, cpu_s=2)
ADD = {
    "kind": "humaneval",
    "prompt": "from typing import List\n\n\ndef add(xs: List[int]) -> int:\n",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n",
    "entry_point": "add",
}


def test_sandbox_runs_a_program_with_stdin():
    result = run_program("import sys\nprint(sum(map(int, sys.stdin.read().split())))", stdin="1 2 3\n", limits=FAST)
    assert (result.status, result.returncode, result.stdout) == ("ok", 0, "6\n")
    assert isolation().python  # an interpreter the sandbox uid can run was found


@pytest.mark.parametrize(
    ("source", "status"),
    [("raise SystemExit(3)", "error"), ("1/0", "error"), ("import os, signal\nos.kill(os.getpid(), 9)", "signal")],
)
def test_sandbox_statuses(source: str, status: str):
    assert run_program(source, limits=FAST).status == status


def test_output_is_truncated():
    result = run_program("print('x' * 10000)", limits=Limits(max_output_bytes=1000))
    assert result.passed and result.truncated and len(result.stdout) == 1000


def test_extract_code_takes_the_last_fenced_block():
    assert extract_code("text\n```python\na = 1\n```\nmore\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("    return 1\n") == "    return 1\n"


def test_humaneval_source_for_completions_and_chat_replies():
    assert humaneval_source(ADD, "    return sum(xs)\n").startswith(ADD["prompt"] + "    return sum(xs)\n")
    chat = "Here:\n```python\ndef add(xs):\n    return sum(xs)\n```"
    src = humaneval_source(ADD, chat)
    assert src.startswith("from typing import List\n\ndef add(xs):") and ADD["test"] in src
    assert verify_code("    return sum(xs)\n", ADD, FAST) and verify_code(chat, ADD, FAST)
    assert not verify_code("    return 0\n", ADD, FAST)


def test_outputs_match_like_livecodebench():
    assert _outputs_match("1 2\n3  \n\n", "1 2\n3")
    assert _outputs_match("0.3333333333", "0.333333334")
    assert not _outputs_match("1 2", "1 3") and not _outputs_match("1\n2", "1")


def test_functional_kind_and_scorer():
    spec = {"kind": "functional", "fn_name": "pair", "tests": [{"input": "1\n2", "output": "[1, 2]"}]}
    tuple_answer = "class Solution:\n    def pair(self, a, b):\n        return (a, b)\n"  # tuples compare as lists
    with CodeScorer(num_workers=2, limits=FAST) as scorer:
        verdicts = scorer.score(
            [tuple_answer, "class Solution:\n    pass\n", "    return sum(xs)\n"], [spec, spec, ADD]
        )
        assert verdicts == [True, False, True]
        with pytest.raises(ValueError, match="1 responses but 2 answers"):
            scorer.score(["x"], [spec, spec])
    slow = "class Solution:\n    def pair(self, a, b):\n        import time\n        time.sleep(30)\n"
    result = run_code_tests(slow, {**spec, "tests": spec["tests"] * 5}, Limits(wall_s=1))
    assert result.status == "error" and "TimeoutError" in result.stderr and result.wall_s < 3  # 1 s, not 5 x 1 s
    assert VERIFIERS.get("code") is CodeScorer
    with pytest.raises(KeyError, match="valid kinds: functional, humaneval, stdin"):
        verify_code("print(1)", {"kind": "unit"})


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid fallback needs root")
def test_fallback_without_namespaces_still_isolates_by_uid():
    # as in a container where unshare is refused: own uid, host temp folder, stragglers killed by uid
    from steer.verifiers import sandbox

    daemon = "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)\n"
    daemon += "print(open('prog.py').read()[:6])"
    result = sandbox._run(daemon, "", FAST, isolation().python, namespaces=False, uid_mode="random")
    assert result.passed and result.stdout == "import\n"
    time.sleep(0.2)
    lo, hi = sandbox._UID_BASE, sandbox._UID_BASE + sandbox._UID_SPAN
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        uid = int(status.split("Uid:")[1].split()[0])
        if lo <= uid < hi and "State:\tZ" not in status:
            alive.append(pid)
    assert alive == []
    denied = sandbox._run("open('/etc/steer-pwned', 'w')", "", FAST, isolation().python, False, "random")
    assert denied.status == "error" and "Permission denied" in denied.stderr
