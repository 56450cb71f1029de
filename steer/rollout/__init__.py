"""Rollout engines: turn formatted prompt strings into sampled responses (token ids, masks, sampling log-probs)."""

from steer.rollout.base import ROLLOUT_BACKENDS, RolloutBatch, RolloutEngine, make_rollout_engine

__all__ = ["ROLLOUT_BACKENDS", "RolloutBatch", "RolloutEngine", "make_rollout_engine"]
