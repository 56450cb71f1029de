"""The trainer ranks as a Ray actor group: placed with a placement group (one bundle per rank), joined into one
``torch.distributed`` process group (gloo on CPU, NCCL on GPU), driven by the controller (the Prefect flow).

``RankGroup(world_size, ...)`` starts a local Ray when none is running and no ``address`` is given (and stops it in
``close``), or joins the cluster at ``address`` (``ray start --head``; ``"auto"`` finds a local one). Every call goes
to all ranks at once (``call``); a rank that dies or raises ends the call with ``RankFailed`` naming the rank and
what it raised, and one that does not answer within ``timeout_s`` (a hung collective) with ``RankFailed`` naming the
ranks that did not answer. ``close`` kills the actors, removes the placement group and stops the Ray it started, so
no process outlives the group, also after a failure.
"""

from __future__ import annotations

import time
from typing import Any

from steer.batch import PolicyBatch
from steer.distributed.partition import imbalance
from steer.distributed.rank import RankTrainer
from steer.lora import is_lora_model
from steer.update import UpdateResult

STARTUP_TIMEOUT_S = 600.0
"""Starting the actors and loading the policy (``rendezvous``, ``init_group``, ``setup``) may take this long, however
short ``timeout_s`` (the collective timeout) is: a 7B policy loads for minutes."""


class RankFailed(RuntimeError):
    """A trainer rank died, raised, or did not answer in time."""


class RankGroup:
    """``world_size`` ``RankTrainer`` actors in one process group."""

    def __init__(
        self,
        world_size: int,
        *,
        address: str | None = None,
        use_gpu: bool = False,
        timeout_s: float = 600.0,
        num_threads: int = 1,
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.world_size, self.timeout_s = world_size, timeout_s
        self._ray, self._owns_ray, self.actors, self._pg = ray, False, [], None
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": address} if address else {"num_cpus": world_size * num_threads}
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
            self._owns_ray = True
        try:
            gpu = 1 if use_gpu else 0
            bundle = {"CPU": num_threads, **({"GPU": gpu} if gpu else {})}
            self._pg = placement_group([bundle] * world_size, strategy="PACK")
            ready, _ = ray.wait([self._pg.ready()], timeout=timeout_s)
            if not ready:
                raise RankFailed(
                    f"Ray could not place {world_size} trainer ranks ({bundle} each) within {timeout_s:.0f} s: the "
                    "cluster lacks the resources; lower trainer.world_size or add nodes"
                )
            actor = ray.remote(RankTrainer)
            self.actors = [
                actor.options(
                    num_cpus=num_threads,
                    num_gpus=gpu,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=r),
                    max_concurrency=1,
                ).remote(r, world_size, num_threads=num_threads)
                for r in range(world_size)
            ]
            addr, port = self._get([self.actors[0].rendezvous.remote()], "rendezvous", [0], STARTUP_TIMEOUT_S)[0]
            device = "cuda" if use_gpu else "cpu"
            backend = "nccl" if use_gpu else "gloo"
            refs = [
                a.init_group.remote(addr, port, backend=backend, timeout_s=timeout_s, device=device)
                for a in self.actors
            ]
            self._get(refs, "init_group", list(range(world_size)), STARTUP_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    # --- calls ----------------------------------------------------------------------------------------------------
    def _get(self, refs: list, what: str, ranks: list[int], timeout_s: float | None = None) -> list:
        ray = self._ray
        timeout_s = timeout_s or self.timeout_s
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        failed = []
        for r, ref in zip(ranks, refs, strict=True):
            if ref in ready:
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001  (reported with its rank below)
                    dead = isinstance(e, ray.exceptions.RayActorError)
                    failed.append((0 if dead else 1, r, e, dead))
        if failed:  # a dead rank first: the others' collective errors are its consequence
            _, r, e, dead = min(failed, key=lambda f: (f[0], f[1]))
            how = "died" if dead else "raised"
            cause = getattr(e, "cause", None) or e  # a RayTaskError carries the rank's own exception (its traceback)
            raise RankFailed(f"trainer rank {r} {how} in {what}: {type(cause).__name__}: {cause}") from e
        if pending:
            late = [r for r, ref in zip(ranks, refs, strict=True) if ref in pending]
            raise RankFailed(
                f"trainer rank(s) {late} did not finish {what} within {timeout_s:.0f} s (a hung collective?): "
                "raise trainer.collective_timeout_s if the step is just slow"
            )
        return ray.get(refs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list:
        """``method(*args, **kwargs)`` on every rank at once; their results in rank order."""
        refs = [getattr(a, method).remote(*args, **kwargs) for a in self.actors]
        return self._get(refs, method, list(range(self.world_size)))

    def call_rank(self, rank: int, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._get([getattr(self.actors[rank], method).remote(*args, **kwargs)], method, [rank])[0]

    # --- training -------------------------------------------------------------------------------------------------
    def setup(self, model: Any, algorithm: Any, **kwargs: Any) -> int:
        """Shard ``model`` (a module or a folder) over the ranks (``RankTrainer.setup``); the parameter count."""
        ref = self._ray.put(model)
        refs = [a.setup.remote(ref, algorithm, **kwargs) for a in self.actors]
        return self._get(refs, "setup", list(range(self.world_size)), STARTUP_TIMEOUT_S)[0]

    def update(self, batch: PolicyBatch, seed: int, **settings: Any) -> dict[str, Any]:
        """One rollout's update on all ranks; the merged result: metrics (averaged over ranks: every rank trains
        the same number of micro-batches), the per-token tensors of every row, the old log-probs, and
        ``perf/tokens_per_s_per_rank``, ``perf/token_imbalance``."""
        t0 = time.perf_counter()
        parts = self.call("update", self._ray.put(batch.to("cpu")), seed, **settings)
        wall = time.perf_counter() - t0
        metrics = {k: sum(p["metrics"][k] for p in parts) / len(parts) for k in parts[0]["metrics"]}
        tokens = [p["metrics"]["perf/update_tokens"] for p in parts]
        metrics["perf/update_tokens"] = sum(tokens)
        metrics["perf/tokens_per_s_per_rank"] = sum(tokens) / len(tokens) / wall
        metrics["perf/token_imbalance"] = imbalance(tokens)
        merged = {k: sum(p[k] for p in parts) for k in ("omega", "weights", "token_advantages")}  # disjoint rows
        full = parts[0]["old_logp_is_full"]
        for k in ("old_logp", "old_entropy"):
            merged[k] = parts[0][k] if full else sum(p[k] for p in parts)
        return {"metrics": metrics, "objective_state": parts[0]["objective_state"], **merged}

    def full_state_dict(self, merged: bool = True) -> dict:
        """The unsharded weights (CPU), gathered from the ranks; with LoRA and ``merged``, the adapters merged into
        the base names, else the peft model's own state (base and adapters)."""
        return self.call("full_state_dict", merged)[0]

    def policy_update(
        self, batch: PolicyBatch, seed: int, *, sampling_model: Any, objective: Any, **settings: Any
    ) -> UpdateResult:
        """``update`` as the flow needs it: ``batch.old_logp``/``old_entropy`` filled, the trained weights loaded
        into ``sampling_model`` (the flow's copy that the rollout engine reads), ``objective``'s state (the adaptive
        entropy coefficient) taken from the ranks, and the result as ``steer.update.UpdateResult``."""
        out = self.update(batch, seed, **settings)
        device = batch.response_mask.device
        batch.old_logp, batch.old_entropy = out["old_logp"].to(device), out["old_entropy"].to(device)
        sampling_model.load_state_dict(self.full_state_dict(merged=not is_lora_model(sampling_model)))
        objective.load_state_dict(out["objective_state"])
        return UpdateResult(out["metrics"], out["omega"], out["weights"], out["token_advantages"])

    def close(self) -> None:
        """Kill the actors, remove the placement group, stop the Ray this group started. Idempotent."""
        ray = self._ray
        if not ray.is_initialized():
            return
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001  (already dead)
                pass
        self.actors = []
        if self._pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self._pg)
            except Exception:  # noqa: BLE001
                pass
            self._pg = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RankGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
