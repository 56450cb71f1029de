"""The embedded default policy: a tiny Llama-architecture causal LM with a character-level tokenizer, warm-started
by a short supervised fine-tune on the embedded arithmetic task, saved in Hugging Face format.

Everything downstream loads it with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (``steer.models.loading``), the same
code path as a real model. Prompt format: the tokenizer's chat template renders a user message as its content plus
``"\\n"``; the demonstration response is ``\\boxed{<answer>}`` followed by EOS, so rewards from the boxed-answer
verifier apply unchanged.

``ensure_tiny_policy(cache_dir, spec)`` caches the built folder under a content key (the spec, a format version and
the library versions), so the second call returns at once. The folder holds ``warm_start.json`` with the measured
held-out accuracy at temperature 1 and greedy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from steer.data.embedded import ArithmeticTask, Problem, heldout_problems, train_problems
from steer.fsutil import build_once

FORMAT_VERSION = 1
"""Bump when the build below changes in a way the spec does not capture, so old cache entries are not reused."""

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{{ '\\n' }}{% endfor %}"
"""Each message's content followed by a newline: a user prompt ``p`` renders as ``p + "\\n"``."""


@dataclass(frozen=True)
class TinyPolicySpec:
    """Everything that determines the built policy; its hash is the cache key."""

    hidden_size: int = 128
    """Model width; at 128 a warm-start step (64 sequences of ~15 tokens) takes ~0.08 s on one core."""
    num_layers: int = 3
    """Transformer blocks; 3 learn the task much faster per step than 2 (measured after 800 steps: 59% vs 36%
    held-out accuracy at temperature 1), and than 2 layers of twice the width at equal time."""
    num_heads: int = 4
    """Attention heads (head size = hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 512
    """SwiGLU MLP width (4x hidden)."""
    attention_bias: bool = True
    """Biases on the attention projections (Qwen2 has them on q/k/v; Llama's config puts them on q/k/v/o); they
    speed up the warm-start (measured after 800 steps, seed 0: 40% vs 18% held-out accuracy at temperature 1)."""
    max_position_embeddings: int = 256
    """Longest prompt + response in tokens (characters)."""
    alphabet: str = "".join(chr(c) for c in range(32, 127)) + "\n"
    """Characters with their own token; printable ASCII and newline. Others map to <unk>."""
    words: tuple[str, ...] = ("Calculate ", "\\boxed{")
    """Multi-character tokens for the task's fixed text, matched before the character split: they halve the
    sequence length (so the cost of a step) while digits stay one token each, as arithmetic needs."""
    task: ArithmeticTask = field(default_factory=ArithmeticTask)
    """The embedded task whose demonstrations warm-start the model."""
    sft_examples: int = 20_000
    """Training problems drawn for the warm-start (the RL run draws from the same stream)."""
    sft_steps: int = 800
    """Optimizer steps of the warm-start: tuned so held-out accuracy at temperature 1 lands near 20-60%."""
    sft_batch_size: int = 64
    """Sequences per warm-start step."""
    sft_learning_rate: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over 5% of the steps, cosine decay to 10%)."""
    eval_problems: int = 256
    """Held-out problems for the warm-start accuracy written to ``warm_start.json``."""
    seed: int = 0
    """Seed of the initialisation, the data order and the evaluation sampling."""

    def key(self) -> str:
        """Content key: hash of the spec, FORMAT_VERSION and the versions of torch, transformers and tokenizers."""
        import tokenizers
        import transformers

        payload = {
            "spec": asdict(self),
            "format": FORMAT_VERSION,
            "versions": [torch.__version__, transformers.__version__, tokenizers.__version__, _rg_version()],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_char_tokenizer(alphabet: str, words: tuple[str, ...] = ()) -> Any:
    """A character-level ``PreTrainedTokenizerFast``: ids 0-3 are <pad> <bos> <eos> <unk>, then one id per character,
    then one per entry of ``words`` (whole strings matched first, e.g. ``"\\boxed{"``).

    No token is added automatically (no BOS, as for Qwen2); the chat template renders a prompt as ``content + "\\n"``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # concatenate characters back without spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in words])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 16,
    )


def build_tiny_model(spec: TinyPolicySpec, tokenizer: Any) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` of the spec's sizes (tied embeddings); seeds from ``spec.seed``.

    Llama rather than Qwen2 (the two differ only by Qwen2's q/k/v biases): for a folder whose config says ``qwen2``,
    transformers 5's ``AutoTokenizer`` ignores ``tokenizer_config.json`` and rebuilds a ``Qwen2Tokenizer`` (byte-level
    BPE pre-tokenizer) that drops this tokenizer's spaces and newlines; for ``llama`` it loads ``tokenizer.json`` as
    saved. SmolLM2 is a Llama too, so both embedded policies share one code path.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        attention_bias=spec.attention_bias,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def demonstration(problem: Problem) -> str:
    """The warm-start target response for a problem: ``\\boxed{<answer>}`` (EOS is appended by the caller)."""
    return "\\boxed{" + problem["answer"] + "}"


def format_tiny_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt string the tiny policy expects: the chat template applied to one user message."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (no nested braces), or None; enough for integer answers."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


def encode_demonstrations(tokenizer: Any, problems: list[Problem]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (M, S) right-padded and a loss mask (M, S) that is 1.0 on response tokens (EOS included)."""
    template = format_tiny_prompt(tokenizer, "\0")  # render the chat template once, substitute per problem
    prompts = tokenizer([template.replace("\0", p["prompt"]) for p in problems], add_special_tokens=False)
    responses = tokenizer([demonstration(p) for p in problems], add_special_tokens=False)
    rows, masks = [], []
    for prompt, response in zip(prompts["input_ids"], responses["input_ids"]):
        response = response + [tokenizer.eos_token_id]
        rows.append(prompt + response)
        masks.append([0.0] * len(prompt) + [1.0] * len(response))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (M, S)
    mask = torch.zeros((len(rows), width))  # (M, S)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return ids, mask


def supervised_warm_start(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int
) -> list[float]:
    """Next-token cross-entropy on the masked (response) tokens of ``ids`` (M, S); returns the loss per step.

    AdamW (betas 0.9/0.95, no weight decay), linear warm-up over 5% of the steps then cosine decay to 10% of ``lr``.
    Batches are drawn without replacement from a permutation seeded with ``seed``, cycling when exhausted.
    """
    import math

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(ids.shape[0], generator=gen)
    losses, cursor = [], 0
    for _ in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(ids.shape[0], generator=gen), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        width = int(mask[rows].nonzero()[:, 1].max()) + 1  # trim trailing padding
        x, m = ids[rows, :width], mask[rows, :width]  # (b, S')
        logits = model(input_ids=x).logits[:, :-1]  # (b, S'-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (b, S'-1)
        loss = (nll * m[:, 1:]).sum() / m[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def sampled_accuracy(
    model: Any, tokenizer: Any, problems: list[Problem], *, temperature: float, seed: int, max_new_tokens: int = 16
) -> float:
    """Share of ``problems`` whose sampled response's boxed answer equals the reference (one sample each)."""
    from steer.rollout.hf import HFRolloutEngine

    engine = HFRolloutEngine(model, tokenizer)
    prompts = [format_tiny_prompt(tokenizer, p["prompt"]) for p in problems]
    batch = engine.generate(
        prompts, n_samples=1, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed
    )
    correct = [boxed_answer(t) == p["answer"] for t, p in zip(batch.response_text, problems)]
    return sum(correct) / len(correct)


def build_tiny_policy(spec: TinyPolicySpec, out_dir: Path, *, num_threads: int = 1) -> dict:
    """Build, warm-start, evaluate and save the policy to ``out_dir``; returns the warm-start metrics.

    ``num_threads`` sets torch's intra-op threads while building (restored afterwards). It is not part of the spec:
    it changes float rounding, not the recipe. One thread by default: two are ~1.8x faster on an idle 2-core machine
    but several times slower when other processes compete for the cores (measured: 55 s vs over 3 minutes).
    """
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        tokenizer = build_char_tokenizer(spec.alphabet, spec.words)
        model = build_tiny_model(spec, tokenizer)
        train = train_problems(spec.task, spec.sft_examples)
        heldout = heldout_problems(spec.task, spec.eval_problems, exclude=train)
        ids, mask = encode_demonstrations(tokenizer, train)
        losses = supervised_warm_start(
            model,
            ids,
            mask,
            steps=spec.sft_steps,
            batch_size=spec.sft_batch_size,
            lr=spec.sft_learning_rate,
            seed=spec.seed,
        )
        sft_seconds = time.perf_counter() - start
        acc_t1 = sampled_accuracy(model, tokenizer, heldout, temperature=1.0, seed=spec.seed)
        acc_greedy = sampled_accuracy(model, tokenizer, heldout, temperature=0.0, seed=spec.seed)
        acc_train = sampled_accuracy(model, tokenizer, train[: spec.eval_problems], temperature=1.0, seed=spec.seed)
    finally:
        torch.set_num_threads(threads)
    metrics = {
        "heldout_accuracy_t1": acc_t1,
        "heldout_accuracy_greedy": acc_greedy,
        "heldout_problems": len(heldout),
        "train_accuracy_t1": acc_train,
        "sft_final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "sft_seconds": sft_seconds,
        "build_seconds": time.perf_counter() - start,
        "num_threads": num_threads,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "spec": asdict(spec),
        "key": spec.key(),
    }
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "warm_start.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def ensure_tiny_policy(
    cache_dir: str | os.PathLike, spec: TinyPolicySpec | None = None, *, num_threads: int = 1
) -> Path:
    """The folder of the tiny policy for ``spec`` under ``cache_dir``, built on first use (about a minute).

    The folder is ``cache_dir/tiny-<key>``; it is written to a temporary sibling and renamed when complete, so an
    interrupted build never leaves a half folder behind and concurrent builders agree on one result.
    """
    spec = spec or TinyPolicySpec()
    target = Path(cache_dir) / f"tiny-{spec.key()}"
    return build_once(target, "warm_start.json", lambda tmp: build_tiny_policy(spec, tmp, num_threads=num_threads))


def _rg_version() -> str:
    from importlib.metadata import version

    return version("reasoning-gym")
