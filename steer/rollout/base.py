"""The rollout contract: ``RolloutBatch``, the ``RolloutEngine`` protocol and the ``ROLLOUT_BACKENDS`` registry.

Shapes: B prompts, G samples per prompt, N = B*G responses, T response tokens (right-padded). Response row
``n = b * G + g`` holds sample ``g`` of prompt ``b`` (``group_index[n] == b``, ``sample_index[n] == g``).

Engines take prompt strings that are already formatted (chat template, instructions): formatting is the caller's
concern (``steer.models.loading.format_prompt``), so the same engine serves a base model and an instruct model.

Backends register by name. A backend whose imports are heavy (torch models, vLLM) registers a dotted path
``"package.module:factory"`` through ``register_lazy``, imported only when the backend is asked for, so that importing
this module stays cheap and a missing optional package only fails the backend that needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from steer import choices
from steer.registry import Registry


@dataclass
class RolloutBatch:
    """Sampled responses for B prompts x G samples; all tensors on the CPU."""

    prompt_ids: list[list[int]]
    """B unpadded prompt token-id lists, in the order of the ``prompts`` argument."""
    group_index: Tensor
    """(N,) long: the prompt row ``b`` of each response."""
    sample_index: Tensor
    """(N,) long: the sample number ``g`` in 0..G-1 of each response within its group."""
    response_ids: Tensor
    """(N, T) long: sampled token ids, right-padded with the pad id; T is the longest response in the batch."""
    response_mask: Tensor
    """(N, T) float: 1.0 on sampled tokens (the EOS token included), 0.0 on padding."""
    response_text: list[str]
    """(N,) the responses decoded with special tokens stripped."""
    truncated: Tensor
    """(N,) bool: the response hit ``max_new_tokens`` without sampling EOS."""
    sampling_logp: Tensor | None = None
    """(N, T) float: log-prob of each sampled token under the sampler's temperature-scaled distribution (before
    top-p truncation; see the backend's docstring), 0.0 on padding; None when the backend does not return it."""

    @property
    def num_prompts(self) -> int:
        """B."""
        return len(self.prompt_ids)

    @property
    def num_samples(self) -> int:
        """G (every prompt gets the same number of samples)."""
        return len(self.response_text) // max(len(self.prompt_ids), 1)

    @property
    def response_lengths(self) -> Tensor:
        """(N,) long: valid tokens per response."""
        return self.response_mask.sum(-1).long()


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a sampler."""

    shares_model: bool
    """True when the engine samples from the training model object itself (``hf``): ``update_weights`` is then a
    no-op and the training flow skips its weight-sync task."""

    def generate(
        self,
        prompts: list[str],
        *,
        n_samples: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> RolloutBatch:
        """Sample ``n_samples`` responses for each formatted prompt; the same seed and inputs give the same batch."""
        ...

    def update_weights(self, model: Any) -> None:
        """Make the sampler use the trainer's current weights (a no-op for a backend that shares the model)."""
        ...

    def close(self) -> None:
        """Release the backend's resources (processes, GPU memory); the engine is unusable afterwards."""
        ...


RolloutFactory = Callable[..., RolloutEngine]
"""``factory(*, model, tokenizer, **options) -> RolloutEngine``; ``model`` is a loaded model or a path, per backend."""

ROLLOUT_BACKENDS: Registry[RolloutFactory] = Registry("rollout backend", choices.ROLLOUT_BACKENDS)


def register_lazy(name: str, target: str) -> None:
    """Register backend ``name`` as the dotted path ``"package.module:attribute"``, imported on first use."""
    module_name, _, attribute = target.partition(":")

    def factory(**kwargs: Any) -> RolloutEngine:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                f"rollout backend {name!r} needs the module {e.name!r}, which is not installed"
            ) from e
        return getattr(module, attribute)(**kwargs)

    factory.__doc__ = f"Lazy factory for the {name!r} rollout backend ({target})."
    ROLLOUT_BACKENDS.register(name)(factory)


def encode_prompts(
    tokenizer: Any, prompts: list[str], *, n_samples: int, max_new_tokens: int, add_special_tokens: bool = True
) -> list[list[int]]:
    """Check a ``generate`` call's arguments and tokenize its B prompts (each engine's first step).

    A prompt whose text already starts with BOS (a chat template that writes it, e.g. Llama-3's) keeps one BOS: the
    tokenizer's own is not added on top of it."""
    if not prompts or n_samples < 1 or max_new_tokens < 1:
        raise ValueError("generate needs at least one prompt, n_samples >= 1 and max_new_tokens >= 1")
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
        if add_special_tokens and bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
            ids = ids[1:]  # the template's BOS and the tokenizer's: one
        out.append(ids)
    return out


def make_rollout_engine(name: str, **kwargs: Any) -> RolloutEngine:
    """Build the backend registered as ``name``; an unknown name raises a KeyError listing the valid ones."""
    return ROLLOUT_BACKENDS.get(name)(**kwargs)


register_lazy("hf", "steer.rollout.hf:HFRolloutEngine")
register_lazy("vllm", "steer.rollout.vllm_client:VLLMRolloutEngine")
