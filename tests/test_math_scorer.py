"""The process-pool scorer: same answers as the serial verifier, a stuck item costs only itself, no process leaks."""

from __future__ import annotations

import threading

import pytest
from faults import fault_env, faults_fired

from steer.verifiers import VERIFIERS
from steer.verifiers.math import MathScorer, verify_math
from steer.verifiers.pool import WatchdogPool

pytestmark = pytest.mark.unit

RESPONSES = [
    "\\boxed{\\frac{3}{4}}",
    "so it is \\boxed{0.75}",
    "\\boxed{2}",
    "no box",
    "\\boxed{\\frac{1}{2",
    "\\boxed{[-1,1]}",
    "\\boxed{x=2, y=1}",
    "\\boxed{\\sqrt{12}}",
] * 4
ANSWERS = ["3/4", "3/4", "3/4", "3/4", "1/2", "[-1, 1]", "x=2, y=1", "2\\sqrt{3}"] * 4


@pytest.fixture(scope="module")
def scorer():
    with MathScorer(num_workers=2, timeout_s=3.0) as s:
        yield s


def test_pool_matches_serial_and_keeps_order(scorer):
    expected = [verify_math(r, a) for r, a in zip(RESPONSES, ANSWERS)]
    assert expected[:8] == [True, True, False, False, False, True, True, True]
    assert scorer.score(RESPONSES, ANSWERS) == expected


def test_pathological_item_costs_only_its_budget(scorer):
    # a tower of powers keeps sympy busy past the 3 s hard limit (math-verify's own alarm is 5 s): the watchdog
    # kills that worker, the item is wrong, and the rest of the batch is scored normally
    responses = ["\\boxed{4}", "\\boxed{9^{9^{9^{9}}}}", "\\boxed{5}", "\\boxed{4}"]
    before = scorer.num_timeouts
    assert scorer.score(responses, ["4", "1", "4", "4"]) == [True, False, False, True]
    assert scorer.num_timeouts == before + 1


def test_scoring_from_a_thread(scorer):
    # math-verify's signal.alarm fails off the main thread; the pool runs it on its workers' main threads
    out: list[list[bool]] = []
    t = threading.Thread(target=lambda: out.append(scorer.score(["\\boxed{1/2}"], ["0.5"])))
    t.start()
    t.join(timeout=60)
    assert out == [[True]]


def test_length_mismatch_is_an_error(scorer):
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        scorer.score(["a", "b"], ["1"])


def test_watchdog_pool_timeouts_crashes_and_cleanup():
    items = ["1 + 1", "__import__('time').sleep(60)", "2 * 3", "__import__('os')._exit(3)", "7"]
    with WatchdogPool("builtins:eval", num_workers=2, timeout_s=1.0, chunksize=2) as pool:
        assert pool.map(items) == [2, None, 6, None, 7]
        # the crash is a fault: retried twice in fresh workers, then given up and counted
        assert (pool.num_timeouts, pool.num_crashes, pool.num_errors) == (1, 3, 1)
        assert pool.last_error == "worker died (exit 3)"
        assert pool.map(["40 + 2"]) == [42]  # replacements work
        processes = [w.process for w in pool._workers]
    assert all(p.poll() is not None for p in processes)


def test_a_crashed_worker_is_retried_and_never_changes_a_correct_answer(monkeypatch, tmp_path):
    # a real worker process os._exit()s on the marked (correct) response, twice: the pool retries it in fresh
    # workers and the third attempt scores it; nothing is counted as an error
    fault_env(monkeypatch, tmp_path / "fired", marker="MARK", times=2)
    with MathScorer(num_workers=1, timeout_s=10.0) as scorer:
        verdicts = scorer.score(["\\boxed{1}", "MARK \\boxed{\\frac{3}{4}}", "\\boxed{5}"], ["1", "0.75", "4"])
        assert verdicts == [True, True, False]
        assert faults_fired(tmp_path / "fired") == 2
        assert (scorer._pool.num_crashes, scorer.num_errors) == (2, 0)


def test_a_persistent_verifier_exception_is_retried_then_counted(monkeypatch, tmp_path):
    # an exception escaping verify_math (MemoryError) on every attempt: scored False, counted, the rest unharmed
    fault_env(monkeypatch, tmp_path / "fired", marker="MARK", kind="raise")
    with MathScorer(num_workers=1, timeout_s=10.0) as scorer:
        verdicts = scorer.score(["\\boxed{1}", "MARK \\boxed{2}", "\\boxed{3}"], ["1", "2", "3"])
        assert verdicts == [True, False, True]
        assert faults_fired(tmp_path / "fired") == 3  # the first try and its two retries
        assert scorer.num_errors == 1 and scorer.last_error.startswith("MemoryError: injected")


def test_worker_that_cannot_start_raises():
    with pytest.raises(RuntimeError, match="failed to start"):
        with WatchdogPool("steer.no_such_module:f", num_workers=1) as pool:
            pool.map([1])


def test_registry_names():
    # other tests register fault-injecting verifiers in the same session; the built-in ones must be there
    assert {"code", "math"} <= set(VERIFIERS.names())
    assert VERIFIERS.get("math") is MathScorer
    with pytest.raises(KeyError, match=r"valid names: .*code, .*math"):
        VERIFIERS.get("maths")
