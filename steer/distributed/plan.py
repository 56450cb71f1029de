"""The plan of a run's update, on paper: ranks, per-rank micro-batches, optimizer steps per rollout, and a memory
estimate per device for FSDP2 (``steer train --dry-run``). Pure Python: no torch, no GPU, no download.

Memory per rank, FSDP2 full sharding over W ranks, P parameters, AdamW, fp32 master weights (docs/distributed.md):

- sharded state: P x (4 fp32 weights + 4 fp32 gradients + 8 AdamW moments) / W bytes;
- gathered parameters: two decoder layers (the one computing and the one prefetched) in the compute dtype;
- activations of one micro-batch of m sequences of S tokens: with gradient checkpointing the input of every layer
  (L x m x S x h) plus one layer's recompute working set, else every layer's working set, which is ~(16 h + 3 i)
  values per token (q/k/v/o projections, attention output, norms, the MLP's gate/up/activation);
- logits of the micro-batch's response tokens, m x T x V in the compute dtype (the log-probs are chunked:
  ``steer.logprobs``, so the fp32 softmax workspace is small).

An estimate to plan with, not a measurement: allocator fragmentation, NCCL buffers and the CUDA context (~1-3 GB)
come on top. A model's shape comes from ``KNOWN_SHAPES`` (offline), else from its ``config.json`` if it is a local
folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = True

    @property
    def layer_params(self) -> int:
        h, d = self.hidden, self.hidden // self.heads
        kv = self.kv_heads * d
        attn = 2 * h * h + 2 * h * kv + ((h + 2 * kv) if self.qkv_bias else 0)
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + embed + self.hidden


KNOWN_SHAPES: dict[str, Shape] = {
    # config.json of the hub models (layers, hidden, intermediate, heads, kv heads, vocab)
    "Qwen/Qwen2.5-Math-7B": Shape(28, 3584, 18944, 28, 4, 152064),
    "Qwen/Qwen2.5-Math-1.5B": Shape(28, 1536, 8960, 12, 2, 151936, tied=True),
    "Qwen/Qwen2.5-1.5B": Shape(28, 1536, 8960, 12, 2, 151936, tied=True),
}


def model_shape(name_or_path: str) -> Shape | None:
    """The shape of a known hub model or of a local Hugging Face folder; None if neither."""
    if name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[name_or_path]
    cfg = Path(name_or_path) / "config.json"
    if not cfg.exists():
        return None
    c = json.loads(cfg.read_text())
    return Shape(
        c["num_hidden_layers"],
        c["hidden_size"],
        c["intermediate_size"],
        c["num_attention_heads"],
        c.get("num_key_value_heads", c["num_attention_heads"]),
        c["vocab_size"],
        tied=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=c.get("model_type") == "qwen2",
    )


def memory_per_rank(
    shape: Shape,
    *,
    world_size: int,
    micro_batch: int,
    seq_len: int,
    response_len: int,
    compute_bytes: int = 2,
    checkpointing: bool = True,
) -> dict[str, float]:
    """The estimate above, in GiB per rank, by part and ``total``."""
    tokens = micro_batch * seq_len
    per_token_layer = 16 * shape.hidden + 3 * shape.intermediate  # values in one layer's working set, per token
    working = tokens * per_token_layer * compute_bytes
    if checkpointing:
        activations = shape.layers * tokens * shape.hidden * compute_bytes + working
    else:
        activations = shape.layers * working
    parts = {
        "sharded weights, grads, AdamW (fp32)": shape.params * 16 / world_size,
        "gathered layers (2, compute dtype)": 2 * shape.layer_params * compute_bytes,
        "activations of one micro-batch": activations,
        "logits of one micro-batch": micro_batch * response_len * shape.vocab * compute_bytes,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def update_plan(config, *, prompt_len: int = 1024) -> list[str]:
    """The lines ``steer train --dry-run`` prints for a ``RunConfig``: batch arithmetic per rank and the memory
    estimate (``prompt_len``: the prompt budget, the paper's 1,024 tokens)."""
    tr, o, r = config.trainer, config.optim, config.rollout
    w = tr.world_size
    n = r.prompts_per_step * r.samples_per_prompt
    mini = config.mini_batch_size
    steps = n // mini * o.epochs
    per_rank = mini // w
    lines = [
        f"trainer: backend {tr.backend}, {w} rank(s) ({'NCCL' if config.model.device.startswith('cuda') else 'gloo'}"
        f" if placed on {'GPUs' if config.model.device.startswith('cuda') else 'CPUs'}), FSDP2"
        f"{', bf16 compute' if tr.mixed_precision == 'bf16' else ''}{', CPU offload' if tr.cpu_offload else ''}",
        f"rollout: B = {r.prompts_per_step} prompts x G = {r.samples_per_prompt} = N = {n} responses, "
        f"<= {r.max_new_tokens} tokens each",
        f"optimizer steps per rollout: N / mini-batch = {n} / {mini} = {n // mini}"
        + (f" x {o.epochs} epochs = {steps}" if o.epochs > 1 else ""),
        f"per rank per optimizer step: {mini} / {w} = {per_rank} responses = {per_rank // o.micro_batch_size} "
        f"micro-batch(es) of {o.micro_batch_size}",
        f"forward/backward passes per rank per rollout: {steps * per_rank // o.micro_batch_size}",
    ]
    shape = model_shape(config.model.name_or_path)
    if shape is None:
        lines.append(f"memory: unknown shape of {config.model.name_or_path!r} (not in KNOWN_SHAPES, no config.json)")
        return lines
    mem = memory_per_rank(
        shape,
        world_size=w,
        micro_batch=o.micro_batch_size,
        seq_len=prompt_len + r.max_new_tokens,
        response_len=r.max_new_tokens,
        compute_bytes=2 if (tr.mixed_precision == "bf16" or config.model.autocast_bf16) else 4,
        checkpointing=config.model.gradient_checkpointing,
    )
    lines.append(
        f"model: {shape.params / 1e9:.2f}B parameters ({shape.layers} layers, hidden {shape.hidden}); memory per "
        f"rank (estimate, prompt <= {prompt_len} tokens, "
        f"{'with' if config.model.gradient_checkpointing else 'without'} gradient checkpointing):"
    )
    lines += [f"  {k:<40} {v:7.1f} GiB" for k, v in mem.items()]
    return lines
