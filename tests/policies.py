"""The policy the flow and service tiers train: the embedded tiny policy's recipe at test size.

The product default (``model.name_or_path: tiny``, 0.75M parameters, 800 warm-start steps) takes 1-3 minutes to
build on two cores, which a fresh checkout would pay inside ``make test``; this spec builds in ~10 s and is cached
by content key beside it. Nothing in the default tier depends on how well it answers: the tests compare runs with
each other (resume vs unbroken, retried vs clean) or check structure, never a threshold on its accuracy, entropy or
a correlation. The default spec's own build and its accuracy band are tested in the slow tier
(``tests/test_tiny_policy.py``).
"""

from __future__ import annotations

from steer.models.tiny import TinyPolicySpec, build_char_tokenizer, build_tiny_model, ensure_tiny_policy
from steer.runtime import cache_dir

TEST_SPEC = TinyPolicySpec(
    hidden_size=64,
    num_layers=2,
    intermediate_size=256,
    sft_examples=4_000,
    sft_steps=300,
    eval_problems=64,
)


SMALL_POLICY = str(cache_dir() / f"tiny-{TEST_SPEC.key()}")
"""Where the test-size policy lives once built (``model.name_or_path`` of the flow tests); the ``small_policy``
fixture (tests/conftest.py) builds it."""


def ensure_small_policy() -> str:
    """Build the test-size policy if it is not cached yet; its folder."""
    path = str(ensure_tiny_policy(cache_dir(), TEST_SPEC, num_threads=1))
    assert path == SMALL_POLICY, (path, SMALL_POLICY)
    return path


def in_memory_policy():
    """A small untrained model and its tokenizer, built in memory (no cache): the weight-sync tests' trainer side."""
    spec = TinyPolicySpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, seed=3)
    tokenizer = build_char_tokenizer(spec.alphabet)
    return build_tiny_model(spec, tokenizer), tokenizer
