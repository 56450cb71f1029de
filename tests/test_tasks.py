"""The Prefect tasks of one RL step called through ``.fn()`` (the function without a task run), on a random
policy of the embedded recipe and the real math scorer: each is the library call it wraps, and the retried tasks
are pure functions of their inputs and seed, which is what makes their retries safe."""

from __future__ import annotations

import pytest
import torch
from faults import fault_env

from steer.config import RolloutConfig
from steer.models.tiny import TinyPolicySpec, build_char_tokenizer, build_tiny_model
from steer.rollout.base import make_rollout_engine
from steer.tracking import NullTracker
from steer.verifiers.math import MathScorer, extract_boxed
from tasks.persist import log_metrics
from tasks.rl import generate_rollouts, score_rollouts

pytestmark = pytest.mark.flow

PROBLEMS = [
    {"id": "a", "prompt": "Calculate 1 + 2.", "answer": "3", "task": "t"},
    {"id": "b", "prompt": "Calculate 4 - 4.", "answer": "0", "task": "t"},
]


@pytest.fixture(scope="module")
def engine_and_tokenizer():
    spec = TinyPolicySpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=1)
    tok = build_char_tokenizer(spec.alphabet, spec.words)
    return make_rollout_engine("hf", model=build_tiny_model(spec, tok), tokenizer=tok), tok


def test_generate_is_a_pure_function_of_its_seed(engine_and_tokenizer):
    engine, tok = engine_and_tokenizer
    cfg = RolloutConfig(prompts_per_step=2, samples_per_prompt=3, max_new_tokens=6)
    a, b = (generate_rollouts.fn(engine, tok, PROBLEMS, cfg, "", seed=7) for _ in range(2))
    c = generate_rollouts.fn(engine, tok, PROBLEMS, cfg, "", seed=8)
    assert a.response_ids.shape[0] == 2 * 3 and a.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(a.response_ids, b.response_ids) and a.response_text == b.response_text  # a retry repeats
    assert not torch.equal(a.response_ids, c.response_ids) or a.response_text != c.response_text


def test_score_rewards_exactly_the_boxed_answers_that_verify(engine_and_tokenizer):
    engine, tok = engine_and_tokenizer
    rollout = generate_rollouts.fn(engine, tok, PROBLEMS, RolloutConfig(samples_per_prompt=2), "", seed=0)
    rollout.response_text = ["\\boxed{3}", "\\boxed{4}", "\\boxed{0}", "no answer"]  # one right per prompt
    with MathScorer(num_workers=1) as scorer:
        scores = score_rollouts.fn(scorer, rollout, PROBLEMS, "pm1")
        again = score_rollouts.fn(scorer, rollout, PROBLEMS, "01")
    assert scores["correct"].tolist() == [True, False, True, False]
    assert scores["rewards"].tolist() == [1.0, -1.0, 1.0, -1.0] and again["rewards"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert [extract_boxed(r) for r in rollout.response_text] == ["3", "4", "0", None]


def test_verifier_crashes_are_retried_and_the_persistent_one_is_counted(engine_and_tokenizer, monkeypatch, tmp_path):
    # real workers os._exit() on the marked responses: 2 crashes are absorbed by the retries (the correct answer
    # keeps its +1), a third exhausts them for one response, which is counted as a verifier error, not hidden
    engine, tok = engine_and_tokenizer
    rollout = generate_rollouts.fn(engine, tok, PROBLEMS, RolloutConfig(samples_per_prompt=2), "", seed=0)
    rollout.response_text = ["X \\boxed{3}", "\\boxed{4}", "\\boxed{0}", "no answer"]
    fault_env(monkeypatch, tmp_path / "transient", marker="X ", times=2)
    with MathScorer(num_workers=1) as scorer:
        scores = score_rollouts.fn(scorer, rollout, PROBLEMS, "pm1")
    assert scores["rewards"].tolist() == [1.0, -1.0, 1.0, -1.0] and scores["verifier_errors"] == 0
    fault_env(monkeypatch, tmp_path / "persistent", marker="X ")
    with MathScorer(num_workers=1) as scorer:
        scores = score_rollouts.fn(scorer, rollout, PROBLEMS, "pm1")
    assert scores["verifier_errors"] == 1 and scores["rewards"].tolist()[1:] == [-1.0, 1.0, -1.0]


def test_log_metrics_refuses_a_name_outside_the_metric_alphabet():
    tracker = NullTracker()
    log_metrics.fn(tracker, {"reward/mean": 0.5}, step=0)
    with pytest.raises(ValueError, match="reward/mean@1"):
        log_metrics.fn(tracker, {"reward/mean@1": 0.5}, step=0)
