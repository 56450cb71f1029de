"""Tests for steer.advantages: hand-computed cases, loop-vs-vectorized parity, hypothesis invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steer.advantages import ADVANTAGE_ESTIMATORS, compute_advantages

pytestmark = pytest.mark.unit

ESTIMATORS = ["grpo", "drgrpo", "rloo", "opo"]


def test_registry_names():
    # the group estimators, plus W-REINFORCE which uses no group baseline
    assert ADVANTAGE_ESTIMATORS.names() == sorted([*ESTIMATORS, "w_reinforce"])


# ------------------------------------------------------------------------------------------- hand-computed tiny cases
# Two groups, interleaved and with non-contiguous ids: group 7 = responses 0, 2, 4 with rewards (1, 0, 0);
# group 3 = responses 1, 3 with rewards (0, 1).
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
GROUPS = torch.tensor([7, 3, 7, 3, 7])


def test_grpo_hand_computed_unbiased_std():
    # group 7: mean 1/3, deviations (2/3, -1/3, -1/3), sum of squares 6/9, unbiased var (6/9)/2 = 1/3
    s7 = math.sqrt(1 / 3)
    # group 3: mean 1/2, deviations (-1/2, 1/2), sum of squares 1/2, unbiased var (1/2)/1 = 1/2
    s3 = math.sqrt(1 / 2)
    eps = 1e-6
    expected = torch.tensor(
        [(2 / 3) / (s7 + eps), -0.5 / (s3 + eps), (-1 / 3) / (s7 + eps), 0.5 / (s3 + eps), (-1 / 3) / (s7 + eps)],
        dtype=torch.float64,
    )
    out = compute_advantages(REWARDS, GROUPS, estimator="grpo")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # the population std would give (2/3) / sqrt(2/9) = 1.414 for response 0, not 1.155
    assert out[0].item() == pytest.approx(1.1547, abs=1e-4)


def test_grpo_eps_is_added_to_std():
    # group (1, 0): std sqrt(1/2); with eps = 1 the advantage of the first is 0.5 / (0.7071 + 1)
    out = compute_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), eps=1.0)
    assert out[0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1.0), rel=1e-6)


def test_drgrpo_hand_computed():
    # group 7: 1 - 1/3, 0 - 1/3, 0 - 1/3; group 3: 0 - 1/2, 1 - 1/2
    expected = torch.tensor([2 / 3, -0.5, -1 / 3, 0.5, -1 / 3], dtype=torch.float64)
    torch.testing.assert_close(compute_advantages(REWARDS, GROUPS, estimator="drgrpo"), expected)


def test_rloo_hand_computed():
    # group 7: 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5 (twice). group 3: 0 - 1 = -1; 1 - 0 = 1
    expected = torch.tensor([1.0, -1.0, -0.5, 1.0, -0.5], dtype=torch.float64)
    torch.testing.assert_close(compute_advantages(REWARDS, GROUPS, estimator="rloo"), expected)


def test_opo_hand_computed():
    lengths = torch.tensor([2, 3, 4, 1, 4])
    # group 7: baseline (2*1 + 4*0 + 4*0) / (2+4+4) = 0.2 -> 0.8, -0.2, -0.2
    # group 3: baseline (3*0 + 1*1) / (3+1) = 0.25 -> -0.25, 0.75
    expected = torch.tensor([0.8, -0.25, -0.2, 0.75, -0.2], dtype=torch.float64)
    torch.testing.assert_close(compute_advantages(REWARDS, GROUPS, estimator="opo", lengths=lengths), expected)


def test_opo_equal_lengths_is_drgrpo():
    lengths = torch.full((5,), 6)
    torch.testing.assert_close(
        compute_advantages(REWARDS, GROUPS, estimator="opo", lengths=lengths),
        compute_advantages(REWARDS, GROUPS, estimator="drgrpo"),
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_identical_rewards_and_singletons_give_exact_zero(estimator):
    # 0.3 seven times: in float32 0.3 - sum/7 is 2.98e-8, not 0, and GRPO would divide it by a ~1e-8 std + 1e-6.
    rewards = torch.tensor([0.3] * 7 + [5.0] + [1.0, -1.0], dtype=torch.float32)
    groups = torch.tensor([0] * 7 + [1] + [2, 2])  # a constant group, a singleton, a mixed group
    out = compute_advantages(rewards, groups, estimator=estimator, lengths=torch.arange(1, 11))
    assert torch.equal(out[:8], torch.zeros(8))
    assert (out[8] > 0) and (out[9] < 0)


def test_opo_without_lengths_names_lengths():
    with pytest.raises(ValueError, match="lengths"):
        compute_advantages(REWARDS, GROUPS, estimator="opo")


def test_opo_rejects_zero_total_length():
    with pytest.raises(ValueError, match="lengths"):
        compute_advantages(REWARDS, GROUPS, estimator="opo", lengths=torch.tensor([0, 1, 0, 1, 0]))


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(KeyError, match="drgrpo, grpo, opo, rloo"):
        compute_advantages(REWARDS, GROUPS, estimator="gpro")


def test_input_validation():
    with pytest.raises(TypeError, match="group_index"):
        compute_advantages(REWARDS, GROUPS.double())
    with pytest.raises(ValueError, match="group_index"):
        compute_advantages(REWARDS, GROUPS[:3])
    with pytest.raises(ValueError, match="rewards"):
        compute_advantages(REWARDS.view(1, 5), GROUPS.view(1, 5))


def test_integer_rewards_are_cast_and_empty_batch():
    out = compute_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), estimator="drgrpo")
    assert out.dtype == torch.float32 and out.tolist() == [0.5, -0.5]
    assert compute_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


# ------------------------------------------------------------------------------------------- loop-vs-vectorized
def _loop_reference(rewards, groups, lengths, estimator, eps=1e-6):
    """A readable per-group loop, independent of the vectorized code."""
    out = [0.0] * len(rewards)
    for g in set(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        rs = [rewards[i] for i in idx]
        if len(set(rs)) == 1:
            continue  # constant group (includes size 1): advantage 0
        n, mean = len(rs), sum(rs) / len(rs)
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (n - 1))
        wmean = sum(lengths[i] * rewards[i] for i in idx) / sum(lengths[i] for i in idx)
        for i in idx:
            r = rewards[i]
            out[i] = {
                "grpo": (r - mean) / (std + eps),
                "drgrpo": r - mean,
                "rloo": r - (sum(rs) - r) / (n - 1),
                "opo": r - wmean,
            }[estimator]
    return out


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("seed", range(5))
def test_vectorized_matches_loop(estimator, seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 7, (12,), generator=gen).tolist()  # 12 groups of 1..6 responses
    ids = torch.randperm(1000, generator=gen)[:12].tolist()  # arbitrary, non-contiguous ids
    groups = [gid for gid, s in zip(ids, sizes) for _ in range(s)]
    perm = torch.randperm(len(groups), generator=gen).tolist()  # responses in any order
    groups = [groups[p] for p in perm]
    n = len(groups)
    if seed % 2:
        rewards = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).double()  # +-1, many constant groups
    else:
        rewards = torch.randn(n, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, 50, (n,), generator=gen)
    expected = _loop_reference(rewards.tolist(), groups, lengths.tolist(), estimator)
    out = compute_advantages(rewards, torch.tensor(groups), estimator=estimator, lengths=lengths)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------- hypothesis properties
@st.composite
def grouped_batches(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    groups = [g for g, s in enumerate(sizes) for _ in range(s)]
    order = draw(st.permutations(range(len(groups))))
    groups = [groups[i] for i in order]
    rewards = draw(
        st.lists(st.floats(-10, 10, allow_nan=False), min_size=len(groups), max_size=len(groups))
        | st.lists(st.sampled_from([-1.0, 1.0]), min_size=len(groups), max_size=len(groups))
    )
    lengths = draw(st.lists(st.integers(1, 100), min_size=len(groups), max_size=len(groups)))
    return (
        torch.tensor(rewards, dtype=torch.float64),
        torch.tensor(groups),
        torch.tensor(lengths),
    )


@settings(max_examples=60, deadline=None)
@given(batch=grouped_batches(), estimator=st.sampled_from(["grpo", "drgrpo", "rloo"]))
def test_group_advantages_sum_to_zero(batch, estimator):
    rewards, groups, lengths = batch
    out = compute_advantages(rewards, groups, estimator=estimator)
    sums = torch.zeros(int(groups.max()) + 1, dtype=torch.float64).index_add_(0, groups, out)
    assert torch.allclose(sums, torch.zeros_like(sums), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(batch=grouped_batches())
def test_opo_length_weighted_advantages_sum_to_zero(batch):
    rewards, groups, lengths = batch
    out = compute_advantages(rewards, groups, estimator="opo", lengths=lengths)
    sums = torch.zeros(int(groups.max()) + 1, dtype=torch.float64).index_add_(0, groups, out * lengths)
    assert torch.allclose(sums, torch.zeros_like(sums), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(batch=grouped_batches(), estimator=st.sampled_from(ESTIMATORS), data=st.data())
def test_permutation_and_relabel_equivariance(batch, estimator, data):
    rewards, groups, lengths = batch
    out = compute_advantages(rewards, groups, estimator=estimator, lengths=lengths)
    perm = torch.tensor(data.draw(st.permutations(range(len(rewards)))))
    relabel = groups * 17 + 3  # other ids, same partition
    out_perm = compute_advantages(rewards[perm], relabel[perm], estimator=estimator, lengths=lengths[perm])
    torch.testing.assert_close(out_perm, out[perm])


@settings(max_examples=40, deadline=None)
@given(batch=grouped_batches(), estimator=st.sampled_from(ESTIMATORS), shift=st.floats(-5, 5))
def test_shift_invariance(batch, estimator, shift):
    # a constant added to every reward leaves every group baseline-relative advantage unchanged
    rewards, groups, lengths = batch
    base = compute_advantages(rewards, groups, estimator=estimator, lengths=lengths)
    shifted = compute_advantages(rewards + shift, groups, estimator=estimator, lengths=lengths)
    assert torch.allclose(base, shifted, atol=1e-5)
