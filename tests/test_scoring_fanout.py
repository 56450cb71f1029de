"""Scoring on Prefect's Ray and Dask task runners (real local 2-worker clusters, shut down after) gives the same
verdicts as the verifier's own process pool, for math answers and code programs."""

from __future__ import annotations

import pytest

from steer.config import ConfigError, ScoringConfig, load_config
from tasks.fanout import FanoutScorer, make_scorer

pytestmark = pytest.mark.flow

MATH = [
    ("\\boxed{4}", "4"),
    ("so \\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{3}", "4"),
    ("no box here", "7"),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    ("\\boxed{10}", "10"),
    ("\\boxed{}", "1"),
] * 3  # 21 items: several chunks of 4
STDIN = {"kind": "stdin", "tests": [{"input": "1 2 3\n", "output": "6"}]}
CODE = [
    ("```python\nimport sys\nprint(sum(map(int, sys.stdin.read().split())))\n```", STDIN),
    ("```python\nprint(5)\n```", STDIN),
    ("```python\nraise SystemExit(1)\n```", STDIN),
]


def _verdicts(scorer, items):
    responses, answers = zip(*items, strict=True)
    return scorer.score(list(responses), list(answers))


@pytest.fixture(scope="module")
def pool_verdicts():
    with make_scorer("math") as math, make_scorer("code") as code:
        return _verdicts(math, MATH), _verdicts(code, CODE)


@pytest.mark.slow  # starting two local clusters and their verifiers: about 2.5 minutes on 2 busy cores
@pytest.mark.parametrize("runner", ["ray", "dask"])
def test_a_cluster_gives_the_pools_verdicts(prefect_harness, pool_verdicts, runner):
    scoring = ScoringConfig(runner=runner, num_workers=2, chunk_size=4)
    math, code = pool_verdicts
    assert math.count(True) == 12 and code == [True, False, False]  # the pool's own verdicts, by hand
    with make_scorer("math", scoring) as scorer:
        assert isinstance(scorer, FanoutScorer)
        assert _verdicts(scorer, MATH) == math
        assert scorer.num_errors == 0
    with make_scorer("code", scoring) as scorer:
        assert _verdicts(scorer, CODE) == code


def test_the_runner_is_a_checked_setting():
    assert load_config("tiny").scoring.runner == "pool"
    with pytest.raises(ConfigError, match="scoring.runner: 'spark' is not one of: 'pool', 'ray', 'dask'"):
        load_config("tiny", {"scoring.runner": "spark"})
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        FanoutScorer("math", ScoringConfig(runner="ray")).score(["\\boxed{1}"], ["1"])
