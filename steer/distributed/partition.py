"""One rank's share of each mini-batch, and the two collectives the update loop needs (``Partition``).

Every rank receives the whole rollout's layout (token ids, masks, advantages: small next to the model), so the
mini-batch's global counts (tokens, sequences) are computed by every rank alike from the whole mini-batch and passed
to ``aggregate``: the gradient summed over ranks is the one-process gradient, however the mini-batch is split (the
counts are the same numbers an all-reduce would give, without the collective). Each rank then trains its own rows:

- ``balance=False`` (default): rank r takes the r-th contiguous block of ``len(mini) / world_size`` rows, so with
  ``micro_batch_size`` dividing the block every micro-batch holds exactly the rows it holds in one process, and the
  update equals the one-process update (the equality test relies on it);
- ``balance=True``: rows are dealt to ranks by token count (longest first, to the rank with the fewest tokens that
  has room), every rank keeping the same number of rows (FSDP needs the same number of forwards on every rank). The
  gradient is still the one-process gradient (global counts) up to float rounding, but micro-batches are made of
  other rows, so the ``micro`` and ``group`` normaliser scopes see other groups.

STEER's normaliser per scope (docs/distributed.md): ``micro``, ``group``, ``group_quantile`` and ``running`` are
rank-local (``running`` folds a rank's own groups only); ``mini`` takes ``reduce_max`` of the ranks' maxima;
``rollout`` sees the whole rollout on every rank (its old log-probs are gathered before the update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class Partition:
    """Rank ``rank`` of ``world_size``; ``reduce_max`` is the all-reduce maximum of a tensor over the ranks."""

    rank: int = 0
    world_size: int = 1
    balance: bool = False
    reduce_max: Callable[[Tensor], Tensor] = field(default=_identity, repr=False)

    def rows(self, lengths: Tensor, micro_batch_size: int) -> Tensor:
        """This rank's rows of a mini-batch whose rows have response ``lengths`` (N,); (N / world_size,) long."""
        n = len(lengths)
        if n % (self.world_size * micro_batch_size):
            raise ValueError(
                f"a mini-batch of {n} responses does not split into {self.world_size} ranks x micro-batches of "
                f"{micro_batch_size}: make optim.mini_batch_prompts x rollout.samples_per_prompt a multiple of "
                "trainer.world_size x optim.micro_batch_size"
            )
        per = n // self.world_size
        if not self.balance:
            return torch.arange(self.rank * per, (self.rank + 1) * per, device=lengths.device)
        return balanced_rows(lengths, self.world_size)[self.rank].to(lengths.device)


def balanced_rows(lengths: Tensor, world_size: int) -> list[Tensor]:
    """Rows dealt to ``world_size`` ranks of equal row count, balancing the token count: longest first, each to the
    rank with the fewest tokens that still has room (ties: the lower rank). Deterministic. -> one sorted (N/W,) per
    rank."""
    per = len(lengths) // world_size
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    tokens, owned = [0] * world_size, [[] for _ in range(world_size)]
    for i in order:
        r = min((r for r in range(world_size) if len(owned[r]) < per), key=lambda r: (tokens[r], r))
        owned[r].append(i)
        tokens[r] += int(lengths[i])
    return [torch.tensor(sorted(o), dtype=torch.long) for o in owned]


def imbalance(tokens_per_rank: list[float]) -> float:
    """max / mean of the ranks' token counts (1 = balanced): ``perf/token_imbalance``."""
    mean = sum(tokens_per_rank) / max(len(tokens_per_rank), 1)
    return max(tokens_per_rank) / mean if mean else 1.0


def micro_generators(generator: torch.Generator | None, n_micro: int) -> list[torch.Generator | None]:
    """One generator per micro-batch of a mini-batch, seeded from ``generator`` (n_micro draws): a micro-batch's
    random choices (Clip-Cov's tokens) are then the same whichever rank trains it."""
    if generator is None:
        return [None] * n_micro
    seeds = torch.randint(2**62, (n_micro,), generator=generator, device=generator.device).tolist()
    return [torch.Generator(device=generator.device).manual_seed(s) for s in seeds]
