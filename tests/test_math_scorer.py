"""The process-pool scorer: same answers as the serial verifier, a stuck item costs only itself, no process leaks."""

from __future__ import annotations

import threading

import pytest

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
        assert (pool.num_timeouts, pool.num_crashes) == (1, 1)
        assert pool.map(["40 + 2"]) == [42]  # replacements work
        processes = [w.process for w in pool._workers]
    assert all(p.poll() is not None for p in processes)


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
