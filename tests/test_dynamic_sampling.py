"""DAPO's overlong penalty and the group bookkeeping of dynamic sampling, on hand-computed tensors."""

from __future__ import annotations

import pytest
import torch

from steer.config import ConfigError, load_config
from steer.dynamic_sampling import concat_rollouts, informative_groups, overlong_penalty, select_groups
from steer.rollout.base import RolloutBatch

pytestmark = pytest.mark.unit


def test_overlong_penalty_is_zero_then_linear_to_minus_one_at_the_budget():
    lengths = torch.tensor([1, 12, 13, 14, 16, 20])
    # L_max 16, L_cache 4: 0 up to 12, then (12 - |y|) / 4, -1 at 16 and beyond
    got = overlong_penalty(lengths, max_length=16, cache=4)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    torch.testing.assert_close(overlong_penalty(lengths, max_length=16, cache=4, factor=0.5), got * 0.5)
    with pytest.raises(ValueError, match="overlong cache"):
        overlong_penalty(lengths, max_length=16, cache=17)


def test_overlong_settings_resolve_against_the_generation_budget_and_are_checked():
    cfg = load_config("tiny", {"rollout.max_new_tokens": 20, "overlong_penalty.enabled": True})
    assert cfg.overlong_penalty.lengths(cfg.rollout.max_new_tokens) == (20, 4)  # a fifth of L_max, as DAPO's
    with pytest.raises(ConfigError, match="overlong_penalty.cache=30 must not exceed"):
        load_config("tiny", {"overlong_penalty": {"enabled": True, "cache": 30}, "rollout.max_new_tokens": 20})


def test_informative_groups_are_those_whose_rewards_differ():
    rewards = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 0.5, 0.25])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert informative_groups(rewards, group, 4).tolist() == [False, True, False, True]


def _rollout(b, g, t, offset=0):
    n = b * g
    ids = torch.arange(n * t).reshape(n, t) + offset
    return RolloutBatch(
        prompt_ids=[[offset + i] for i in range(b)],
        group_index=torch.arange(b).repeat_interleave(g),
        sample_index=torch.arange(g).repeat(b),
        response_ids=ids,
        response_mask=torch.ones(n, t),
        response_text=[f"r{offset + i}" for i in range(n)],
        truncated=torch.zeros(n, dtype=torch.bool),
        sampling_logp=-torch.ones(n, t),
    )


def test_select_and_concat_renumber_the_groups_and_pad_the_responses():
    a = select_groups(_rollout(3, 2, 2), [2, 0])  # groups 2 and 0, in that order
    assert a.prompt_ids == [[2], [0]] and a.group_index.tolist() == [0, 0, 1, 1]
    assert a.response_text == ["r4", "r5", "r0", "r1"]
    b = select_groups(_rollout(2, 2, 3, offset=100), [1])
    both = concat_rollouts([a, b], pad_id=-7)
    assert both.num_prompts == 3 and both.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert both.response_ids.shape == (6, 3)
    assert both.response_ids[:4, 2].tolist() == [-7] * 4  # a's responses padded to b's T
    assert both.response_mask[:4, 2].tolist() == [0.0] * 4 and both.sampling_logp[:4, 2].tolist() == [0.0] * 4
    assert both.response_text[4:] == ["r102", "r103"]
