"""Two trainer ranks (gloo, CPU) as Ray actors give the one-process update: FSDP2-sharded ranks each train their
share of every mini-batch (``steer.distributed``), and the weights after one rollout's update equal the
one-process weights to 1e-6 for GRPO, STEER with each rank-exact normaliser scope, and Clip-Cov. A rank that hangs
or dies is named, and no Ray process outlives the group."""

import psutil
import pytest
import torch

from steer.algorithms import get_algorithm
from steer.distributed.group import RankFailed, RankGroup
from steer.distributed.partition import Partition, balanced_rows, imbalance
from steer.lora import apply_lora, merged_state_dict
from steer.objective import build_objective
from steer.scoring import score_batch
from steer.update import policy_update, reuses_forward_as_old
from tests.test_update import tiny_batch, tiny_model

pytestmark = pytest.mark.unit

SETTINGS = dict(mini_batch_size=8, micro_batch_size=2, epochs=1, temperature=1.0, max_grad_norm=1.0)
OPTIM = dict(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999))
SEED = 11


def _ray_processes() -> list[str]:
    """Ray's own processes started below this test process (the GCS, the raylet, workers)."""
    names = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "ray" in cmd and any(k in cmd for k in ("gcs_server", "raylet", "default_worker", "ray::")):
            names.append(cmd[:80])
    return names


@pytest.fixture(scope="module")
def ranks():
    group = RankGroup(2, timeout_s=120)
    try:
        yield group
    finally:
        group.close()
        import ray

        assert not ray.is_initialized()
        leftover = _ray_processes()
        for _ in range(50):  # the raylet's children exit a moment after it
            if not leftover:
                break
            psutil.wait_procs(psutil.Process().children(recursive=True), timeout=0.2)
            leftover = _ray_processes()
        assert not leftover, leftover


LORA = dict(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


def _one_process(cfg, lora=None):
    model = tiny_model(3) if lora is None else apply_lora(tiny_model(3), **lora)
    batch = tiny_batch(n_prompts=4, g=4)  # N = 16 responses: 2 mini-batches of 8, 4 rows per rank, micro 2
    objective = build_objective(cfg)
    if not reuses_forward_as_old(objective, num_responses=16, mini_batch_size=8, epochs=1):
        batch.old_logp, batch.old_entropy = score_batch(model, batch, micro_batch_size=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **OPTIM)
    res = policy_update(model, opt, batch, objective, generator=torch.Generator().manual_seed(SEED), **SETTINGS)
    state = model.state_dict() if lora is None else merged_state_dict(model.state_dict(), r=lora["r"], alpha=8.0)
    return state, res, batch


CASES = {
    "grpo": get_algorithm("grpo"),
    "clip_cov": get_algorithm("clip_cov"),
    **{
        f"steer-{scope}": get_algorithm("steer", token_weighting={"normaliser": scope, "normaliser_group": 4})
        for scope in ("micro", "group", "group_quantile", "mini", "rollout")
    },
    "steer-lora": get_algorithm("steer", token_weighting={"normaliser": "mini"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_give_the_one_process_weights(ranks, name):
    cfg, lora = CASES[name], LORA if name.endswith("lora") else None
    want, res, batch = _one_process(cfg, lora)
    ranks.setup(tiny_model(3), cfg, lora=lora, **OPTIM)
    got = ranks.update(tiny_batch(n_prompts=4, g=4), SEED, max_response_len=None, **SETTINGS)
    weights = ranks.full_state_dict()
    assert set(weights) == set(want)
    worst = max(float((weights[k] - want[k]).abs().max()) for k in want)
    assert worst < 1e-6, f"{name}: largest weight difference {worst:.3g}"
    start = tiny_model(3).state_dict()
    assert any(not torch.equal(weights[k], start[k]) for k in start)  # the update moved the weights
    for k in ("omega", "weights", "token_advantages"):  # every row came back from the rank that trained it
        assert torch.allclose(got[k], getattr(res, k), atol=1e-5), k
    assert torch.allclose(got["old_logp"], batch.old_logp, atol=1e-5)
    assert got["metrics"]["actor/optimizer_steps"] == res.metrics["actor/optimizer_steps"] == 2
    assert got["metrics"]["perf/update_tokens"] == res.metrics["perf/update_tokens"]


def test_lora_trains_only_the_adapters_and_merges_into_the_base_names():
    base = tiny_model(3).state_dict()
    model = apply_lora(tiny_model(3), **LORA)
    assert all(torch.equal(v, base[k]) for k, v in merged_state_dict(model.state_dict(), r=4, alpha=8.0).items())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    merged, _, _ = _one_process(get_algorithm("grpo"), LORA)
    assert set(merged) == set(base)  # a sampler without adapters loads it under the base model's names
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(any(m in k for m in LORA["target_modules"]) for k in changed)  # only adapted W move


def test_balanced_rows_give_each_rank_the_same_rows_and_about_the_same_tokens():
    lengths = torch.tensor([9, 1, 1, 1, 8, 2, 2, 2])
    parts = balanced_rows(lengths, 2)
    assert sorted(torch.cat(parts).tolist()) == list(range(8)) and all(len(p) == 4 for p in parts)
    tokens = [int(lengths[p].sum()) for p in parts]
    assert tokens == [13, 13]  # 9+2+1+1 and 8+2+2+1, where contiguous blocks give 12 and 14
    contiguous = [int(lengths[Partition(r, 2).rows(lengths, 2)].sum()) for r in range(2)]
    assert contiguous == [12, 14]
    assert imbalance([13.0, 13.0]) == 1.0 and imbalance([12.0, 14.0]) == pytest.approx(14 / 13)
    assert torch.equal(Partition(1, 2, balance=True).rows(lengths, 2), parts[1])
    with pytest.raises(ValueError, match="multiple of trainer.world_size x optim.micro_batch_size"):
        Partition(0, 2).rows(lengths, 3)


def test_a_hung_collective_then_a_dead_rank_are_named(ranks):
    """Last in this module: it breaks the group (the fixture then closes it and checks that no process is left)."""
    import ray

    ranks.setup(tiny_model(), get_algorithm("grpo"), **OPTIM)
    ranks.timeout_s = 4
    # rank 0 alone enters the gather of the weights: rank 1 never joins, so rank 0 hangs in the collective
    with pytest.raises(RankFailed, match=r"trainer rank\(s\) \[0\] did not finish full_state_dict within 4 s"):
        ranks.call_rank(0, "full_state_dict")
    ray.kill(ranks.actors[1], no_restart=True)
    with pytest.raises(RankFailed, match="trainer rank 1 died in full_state_dict"):
        ranks.call("full_state_dict")


def test_the_paper_preset_validates_and_prints_its_plan_without_a_gpu(capsys):
    from steer_cli.main import main

    assert main(["train", "--preset", "paper_8gpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 rank(s)" in out and "4096 / 256 = 16" in out  # N = 512 x 8, mini-batch 32 x 8: 16 steps per rollout
    assert "256 / 8 = 32 responses = 4 micro-batch(es) of 8" in out
    assert "7.62B parameters" in out  # Qwen2.5-Math-7B's shape (KNOWN_SHAPES), counted from its layers
    total = float(out.split("total")[1].split("GiB")[0])
    assert total < 80  # fits an 80 GB GPU by the estimate's own arithmetic (docs/distributed.md)
