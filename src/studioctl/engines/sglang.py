"""SGLang: ``PYTHON -m sglang.launch_server --model-path M …``.

Flag names were checked against SGLang 0.5.23's own parser (``ServerArgs.add_cli_args``).
"""

from __future__ import annotations

import re

from studioctl.engines.base import BoolFlag, MetricSpec, Stage, TableEngine

VALUE_FLAGS = {
    "tensor_parallel_size": "--tp-size",
    "pipeline_parallel_size": "--pp-size",
    "data_parallel_size": "--dp-size",
    "max_model_len": "--context-length",
    "gpu_memory_utilization": "--mem-fraction-static",
    "dtype": "--dtype",
    "quantization": "--quantization",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_num_seqs": "--max-running-requests",
    "chat_template": "--chat-template",
    "tool_call_parser": "--tool-call-parser",
    "reasoning_parser": "--reasoning-parser",
    "seed": "--random-seed",
}

# SGLang's booleans are store_true: false is the default and needs no flag.
BOOL_FLAGS = {
    "trust_remote_code": BoolFlag(("--trust-remote-code",), ()),
    # `--disable-cuda-graph` is deprecated in 0.5.23; this is the spelling it points to.
    "enforce_eager": BoolFlag(
        (
            "--cuda-graph-backend-decode",
            "disabled",
            "--cuda-graph-backend-prefill",
            "disabled",
        ),
        (),
    ),
    # SGLang has no such switch: with --tool-call-parser set, tool_choice "auto" just works.
    "enable_auto_tool_choice": BoolFlag(
        (), None, note=" (SGLang always allows tool_choice auto when tool_call_parser is set)"
    ),
}

RESERVED = {
    "model_path": "model",
    "model": "model",
    "served_model_name": "served_model_name",
    "host": "host",
    "port": "port",
    "tp_size": "tensor_parallel_size",
    "tensor_parallel_size": "tensor_parallel_size",
    "pp_size": "pipeline_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size",
    "dp_size": "data_parallel_size",
    "data_parallel_size": "data_parallel_size",
    "context_length": "max_model_len",
    "max_model_len": "max_model_len",
    "mem_fraction_static": "gpu_memory_utilization",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "dtype": "dtype",
    "quantization": "quantization",
    "kv_cache_dtype": "kv_cache_dtype",
    "max_running_requests": "max_num_seqs",
    "max_num_seqs": "max_num_seqs",
    "trust_remote_code": "trust_remote_code",
    "disable_cuda_graph": "enforce_eager",
    "enforce_eager": "enforce_eager",
    "chat_template": "chat_template",
    "tool_call_parser": "tool_call_parser",
    "enable_auto_tool_choice": "enable_auto_tool_choice",
    "reasoning_parser": "reasoning_parser",
    "random_seed": "seed",
    "seed": "seed",
}

# The SGLang 0.5.23 booleans that do have a --no- form (argparse BooleanOptionalAction).
NEGATABLE = frozenset(
    {
        "dcp_replicate_q_proj",
        "dllm_fdfo",
        "enable_decoder_swa_bounded_replay",
        "enable_dsa_fused_indexer",
        "enable_fused_qk_norm_rope",
        "enable_tf32_matmul",
        "enable_tp_lm_head_all_to_all",
        "experts_shared_outer_loras",
        "lora_strict_loading",
        "mm_enable_dp_encoder",
        "ple_offload_embedding",
        "speculative_enable_w4a4_mxfp4_megamoe",
    }
)

STAGES = (
    Stage("config", "server arguments parsed", re.compile(r"server_args=")),
    Stage("loading", "loading weights", re.compile(r"Load weight begin")),
    Stage("weights", "weights loaded", re.compile(r"Load weight end")),
    Stage("kv_cache", "KV cache allocated", re.compile(r"Memory pool end")),
    Stage(
        "http", "HTTP server listening", re.compile(r"Uvicorn running on|Started server process")
    ),
    Stage(
        "api", "warmed up, API server up", re.compile(r"The server is fired up and ready to roll")
    ),
)

# What SGLang serves on GET /metrics (with --enable-metrics), in studioctl's names; older
# names after the current one.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("requests_running", "gauge", ("sglang:num_running_reqs",)),
    MetricSpec("requests_waiting", "gauge", ("sglang:num_queue_reqs",)),
    MetricSpec(
        "kv_cache_usage",
        "gauge",
        ("sglang:token_usage",),
        agg="mean",
        note="0–1 fraction of the KV token pool; one per scheduler (DP rank): mean",
    ),
    MetricSpec("prompt_tokens_total", "counter", ("sglang:prompt_tokens_total",)),
    MetricSpec("generation_tokens_total", "counter", ("sglang:generation_tokens_total",)),
    MetricSpec("requests_total", "counter", ("sglang:num_requests_total",)),
    MetricSpec("ttft", "histogram", ("sglang:time_to_first_token_seconds",)),
    MetricSpec(
        "itl",
        "histogram",
        ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        note="time_per_output_token_seconds in older SGLang",
    ),
)

ENGINE = TableEngine(
    name="sglang",
    module="sglang.launch_server",
    model_flag="--model-path",
    health_path="/health",  # 503 until warm-up is done
    ready_paths=("/get_model_info",),
    stages=STAGES,
    metrics=METRICS,  # needs --enable-metrics (engine_args: {enable_metrics: true})
    # Same request and answer as vLLM's (also served at /v1/tokenize).
    tokenize_path="/tokenize",
    process_markers=("sglang.launch_server", "sglang::scheduler", "sglang::detokenizer"),
    value_flags=VALUE_FLAGS,
    bool_flags=BOOL_FLAGS,
    reserved=RESERVED,
    negatable=NEGATABLE,
    negate_by_default=False,
    # SGLang 0.5.23 reads no key variable; `--config FILE.yaml` merges the file's keys into
    # its arguments (file < command line). It guards every route but /health*, /ready* and
    # /metrics* with the key, /get_model_info and /tokenize included.
    api_key_config_flag="--config",
)
