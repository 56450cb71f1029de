"""The vLLM engine settings of the config (``rollout.vllm``) are validated and reach the worker's ``vllm.LLM``
arguments: the run's runtime starts the real worker script, which logs its engine arguments before it imports vllm
(absent from this venv, so the start fails right after, with the log in the error)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from steer.config import ConfigError, load_config
from steer.rollout.vllm_client import VLLMWorkerError
from steer.runtime import open_runtime

pytestmark = pytest.mark.unit


def test_the_settings_are_validated_with_the_field_named():
    with pytest.raises(ConfigError, match="rollout.vllm.gpu_memory_utilization: Input should be less than or equal"):
        load_config("tiny", {"rollout.vllm.gpu_memory_utilization": 1.5})
    with pytest.raises(ConfigError, match="rollout.vllm.tensor_parallel_size: Input should be greater than or equal"):
        load_config("tiny", {"rollout.vllm.tensor_parallel_size": 0})
    with pytest.raises(ConfigError, match="rollout.vllm.dtype: 'bf16' is not one of: 'float32', 'bfloat16'"):
        load_config("tiny", {"rollout.vllm.dtype": "bf16"})
    with pytest.raises(ConfigError, match="rollout.vllm.max_num_seqs: Input should be greater than 0"):
        load_config("tiny", {"rollout.vllm.max_num_seqs": 0})
    assert load_config("tiny").rollout.engine_options() == {}  # the hf backend takes none of them


def test_the_settings_reach_the_workers_engine_args(small_policy, tmp_path):
    settings = {
        "python": sys.executable,  # the main venv: the real worker script, which fails at `import vllm`
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.4,
        "tensor_parallel_size": 1,
        "enable_prefix_caching": False,
        "max_num_seqs": 64,
    }
    config = load_config(
        "tiny",
        {
            "output_dir": str(tmp_path / "run"),
            "model.name_or_path": small_policy,
            "rollout": {"backend": "vllm", "vllm": settings},
        },
    )
    with pytest.raises(VLLMWorkerError, match="No module named .vllm.") as err:
        open_runtime(config, small_policy)
    logged = json.loads(re.search(r"vllm.LLM engine args: (\{.*?\})\n", str(err.value)).group(1))
    assert logged["dtype"] == "bfloat16" and logged["gpu_memory_utilization"] == 0.4
    assert logged["tensor_parallel_size"] == 1 and logged["max_num_seqs"] == 64
    assert logged["enable_prefix_caching"] is False
