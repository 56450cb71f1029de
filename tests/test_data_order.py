"""``DataOrder``: step s's batch is a pure function of (seed, s), one seeded permutation per pass over the data."""

import pytest
import torch

from steer.runtime import DataOrder, derive_seed

pytestmark = pytest.mark.unit


def _by_definition(problems, batch_size, seed, step):
    """The definition, one permutation drawn per problem: item k of the stream is pass k // n, position k % n."""
    n, out = len(problems), []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "data", epoch)))
        out.append(problems[int(perm[pos])])
    return out


def test_batches_follow_the_per_pass_permutation_across_pass_boundaries_and_resumes():
    problems = [{"id": i} for i in range(10)]
    order = DataOrder(problems, batch_size=4, seed=3)
    steps = range(8)  # 32 items over 10 problems: steps 2, 4 and 7 straddle a pass boundary
    assert [order.batch(s) for s in steps] == [_by_definition(problems, 4, 3, s) for s in steps]
    assert DataOrder(problems, batch_size=4, seed=3).batch(6) == order.batch(6)  # a resume needs no state
    first_pass = [p["id"] for s in (0, 1) for p in order.batch(s)] + [p["id"] for p in order.batch(2)[:2]]
    assert sorted(first_pass) == list(range(10))  # each problem once per pass
