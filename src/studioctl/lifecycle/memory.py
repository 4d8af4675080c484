"""Memory: how much GPU memory a recipe needs, and how much each GPU has.

Placement compares the two. The need, in order (``Need.source``):

- ``recipe``: the recipe's ``vram_gb``;
- ``learned``: what its processes held during its last run (NVML, per process), passed in by
  the caller (``learned_gb``);
- ``estimate``: from the model's ``config.json`` (a local folder, or the Hugging Face cache)
  and the engine's memory fraction: on a GPU, vLLM takes ``gpu_memory_utilization`` (0.9 when
  unset, its default) of each GPU it runs on, whatever the model; without GPUs the weights
  plus the CPU KV cache (``VLLM_CPU_KVCACHE_SPACE``);
- ``unknown``: none of these (``gb`` is None; the caller counts it as a whole GPU).

GB here means GiB (2^30 bytes), as ``nvidia-smi`` counts. A need is the total over every GPU
the engine runs on (tensor x pipeline x data parallel ranks); ``per_gpu_gb`` splits it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from studioctl.gpu import HostGpus
    from studioctl.recipes import Recipe
    from studioctl.settings import Settings
    from studioctl.store.vram import VramPeak, VramRepo

GIB = 1024**3
#: The fraction of each GPU an engine takes when the recipe leaves
#: ``gpu_memory_utilization`` unset: vLLM's default (SGLang picks about as much by GPU size).
DEFAULT_FRACTION = 0.9
#: A config.json larger than this is not a model config (read no further).
_CONFIG_MAX_BYTES = 1024 * 1024
_DTYPE_BYTES = {
    "half": 2,
    "float16": 2,
    "bfloat16": 2,
    "float": 4,
    "float32": 4,
    "fp8": 1,
    "float8_e4m3fn": 1,
}
#: Model types whose MLP has two matrices (no gate); the rest are counted with three.
_UNGATED = frozenset(
    {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "gpt_bigcode"}
)

Source = Literal["recipe", "learned", "estimate", "unknown"]


@dataclass(frozen=True)
class Need:
    """A recipe's memory need: ``gb`` over all its ``gpus`` (None: unknown), where it came
    from, and how (for events and ``--dry-run``)."""

    gb: float | None
    source: Source
    gpus: int = 1
    detail: str = ""

    @property
    def per_gpu_gb(self) -> float | None:
        return None if self.gb is None else self.gb / max(1, self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gb": _round(self.gb),
            "per_gpu_gb": _round(self.per_gpu_gb),
            "gpus": self.gpus,
            "source": self.source,
            "detail": self.detail,
        }


def ranks(recipe: Recipe) -> int:
    """How many GPUs the engine spreads over: tensor x pipeline x data parallel."""
    return (
        (recipe.tensor_parallel_size or 1)
        * (recipe.pipeline_parallel_size or 1)
        * (recipe.data_parallel_size or 1)
    )


def memory_need_gb(recipe: Recipe, *, learned_gb: float | None, gpu_total_gb: float | None) -> Need:
    """The recipe's need (see the module docstring). ``learned_gb``: the peak of its last
    run (None: none known); ``gpu_total_gb``: the memory of one GPU it would run on (None:
    a host without GPUs)."""
    n = ranks(recipe)
    if recipe.vram_gb is not None:
        return Need(recipe.vram_gb, "recipe", n, f"vram_gb: {recipe.vram_gb:g}")
    if learned_gb is not None and learned_gb > 0:
        return Need(learned_gb, "learned", n, f"peak of its last run: {learned_gb:.2f} GiB")
    found = estimate_gb(recipe, gpu_total_gb=gpu_total_gb)
    if found is not None:
        gb, how = found
        return Need(gb, "estimate", n, how)
    return Need(None, "unknown", n, "no vram_gb, no earlier run, no config.json to read")


def learned_gb(repo: VramRepo, recipe: Recipe) -> float | None:
    """The peak of the recipe's last run in GiB (``store.vram``), while the recipe is the one
    that ran (same hash); None otherwise."""
    return peak_gb(repo.last_run(recipe.id, recipe.content_hash()))


def peak_gb(peak: VramPeak | None) -> float | None:
    return None if peak is None or peak.vram_bytes <= 0 else peak.vram_bytes / GIB


def estimate_gb(recipe: Recipe, *, gpu_total_gb: float | None) -> tuple[float, str] | None:
    """An estimate and how it was made, or None when there is nothing to estimate from."""
    n = ranks(recipe)
    config = read_model_config(recipe)
    weights: float | None = None
    parts: list[str] = []
    if config is not None:
        params = model_params(config)
        if params is not None:
            bytes_per = weight_bytes(recipe, config, on_gpu=gpu_total_gb is not None)
            replicas = recipe.data_parallel_size or 1  # each replica holds all the weights
            weights = params * bytes_per * replicas / GIB
            parts.append(f"{params / 1e9:.3g}B params x {bytes_per:g} B")
    if gpu_total_gb is not None:
        fraction = recipe.gpu_memory_utilization or DEFAULT_FRACTION
        taken = fraction * gpu_total_gb * n
        parts.append(f"engine takes {fraction:g} x {gpu_total_gb:.1f} GiB x {n} GPU")
        return max(taken, weights or 0.0), " + ".join(parts)
    if weights is None:
        return None
    kv = _cpu_kv_cache_gb(recipe)
    if kv:
        parts.append(f"CPU KV cache {kv:g} GiB")
    return weights + kv, " + ".join(parts)


def _cpu_kv_cache_gb(recipe: Recipe) -> float:
    """vLLM on a CPU: ``VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache, when the recipe sets it."""
    if recipe.backend != "vllm":
        return 0.0
    try:
        return max(0.0, float(recipe.env.get("VLLM_CPU_KVCACHE_SPACE", "0")))
    except ValueError:
        return 0.0


def weight_bytes(recipe: Recipe, config: Mapping[str, Any], *, on_gpu: bool) -> float:
    """Bytes per parameter: quantization bits, else the dtype (the recipe's, else the
    config's; under ``auto`` a 32-bit model runs in 16 bits on a GPU, as the engines do)."""
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        bits = quant.get("bits") or quant.get("w_bit")
        if isinstance(bits, int) and 0 < bits <= 16:
            return bits / 8
        if str(quant.get("quant_method", "")).startswith("fp8"):
            return 1.0
    if recipe.quantization and recipe.quantization.startswith("fp8"):
        return 1.0
    if recipe.dtype not in (None, "auto"):
        return float(_DTYPE_BYTES[recipe.dtype])
    stated = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    size = _DTYPE_BYTES.get(str(stated), 2)
    return 2.0 if on_gpu and size > 2 else float(size)


def model_params(config: Mapping[str, Any]) -> int | None:
    """Parameters of a decoder-only transformer from its config.json: embeddings (and an
    untied output head), attention, MLP (or its experts), norms. None: not such a config."""
    text = config.get("text_config")
    if "hidden_size" not in config and isinstance(text, dict):
        config = text  # a multimodal model: the language model (the vision part is small)
    h = _int(config, "hidden_size", "n_embd", "d_model")
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(config, "vocab_size")
    if not (h and layers and vocab):
        return None
    heads = _int(config, "num_attention_heads", "n_head") or 1
    kv_heads = _int(config, "num_key_value_heads") or heads
    head_dim = _int(config, "head_dim") or h // heads
    attention = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim
    inter = _int(config, "intermediate_size", "ffn_dim", "n_inner") or 4 * h
    mats = 2 if config.get("model_type") in _UNGATED else 3
    experts = _int(config, "num_local_experts", "num_experts", "n_routed_experts")
    if experts:
        expert_inter = _int(config, "moe_intermediate_size") or inter
        shared = (_int(config, "n_shared_experts") or 0) * expert_inter
        shared += _int(config, "shared_expert_intermediate_size") or 0
        mlp = mats * h * (expert_inter * experts + shared) + h * experts  # + the router
    else:
        mlp = mats * h * inter
    per_layer = attention + mlp + 2 * h
    heads_out = 1 if config.get("tie_word_embeddings", False) else 2
    return vocab * h * heads_out + layers * per_layer + h


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def read_model_config(recipe: Recipe) -> dict[str, Any] | None:
    """The model's config.json: in its local folder, or for a Hugging Face id in the hub
    cache (``HF_HUB_CACHE``, ``HF_HOME``/hub, ``~/.cache/huggingface/hub``; the recipe's own
    ``env`` first). Never downloads; None when not found or not readable."""
    path = _config_path(recipe)
    if path is None:
        return None
    try:
        with path.open("rb") as fh:
            raw = fh.read(_CONFIG_MAX_BYTES + 1)
        if len(raw) > _CONFIG_MAX_BYTES:
            return None
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _config_path(recipe: Recipe) -> Path | None:
    if recipe.model_is_local:
        return Path(os.path.expanduser(recipe.model)) / "config.json"
    org, sep, name = recipe.model.partition("/")
    if not sep or "/" in name:
        return None
    env = {**os.environ, **recipe.env}
    cache = env.get("HF_HUB_CACHE") or (
        os.path.join(env["HF_HOME"], "hub") if env.get("HF_HOME") else "~/.cache/huggingface/hub"
    )
    repo = Path(os.path.expanduser(cache)) / f"models--{org}--{name}"
    try:
        ref = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not ref or "/" in ref or ref.startswith("."):
        return None
    return repo / "snapshots" / ref / "config.json"


def capacity_gb(host_gpus: HostGpus | None, settings: Settings) -> dict[int, float]:
    """GiB per GPU index: NVML's total memory of each GPU (0 for a lost one). On a host
    without GPUs (no driver, or none found), one pseudo GPU 0 with ``host.capacity_gb``
    (``math.inf`` when unset: unlimited)."""
    pseudo = settings.host.capacity_gb
    if host_gpus is None or not host_gpus.available or not host_gpus.gpus:
        return {0: pseudo if pseudo is not None else math.inf}
    out: dict[int, float] = {}
    for g in host_gpus.gpus:
        if g.lost:
            out[g.index] = 0.0
        elif g.mem_total_bytes is None:  # the driver does not tell: do not guess small
            out[g.index] = pseudo if pseudo is not None else math.inf
        else:
            out[g.index] = g.mem_total_bytes / GIB
    return out


def free_gb(host_gpus: HostGpus | None) -> dict[int, float]:
    """GiB free per GPU now (NVML), including memory held by processes studioctl did not
    start; GPUs that do not report it are left out ({} without GPUs)."""
    if host_gpus is None or not host_gpus.available:
        return {}
    return {
        g.index: g.mem_free_bytes / GIB
        for g in host_gpus.gpus
        if not g.lost and g.mem_free_bytes is not None
    }


def _round(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 3)


def need_by_gpu(need: Need, gpus: Sequence[int], capacity: Mapping[int, float]) -> dict[int, float]:
    """GiB the engine would take on each GPU: its ranks (``need.gpus``) go on the first GPUs
    of its list — or of every GPU in ``capacity`` when the recipe names none, as an engine
    without ``CUDA_VISIBLE_DEVICES`` starts on device 0 — each with an equal share. An
    unknown need takes those GPUs whole."""
    devices = sorted(gpus) if gpus else sorted(capacity)
    used = devices[: max(1, need.gpus)]
    if not used:
        return {}
    if need.gb is None:
        return {g: capacity.get(g, math.inf) for g in used}
    return {g: need.gb / len(used) for g in used}


def free_after(
    capacity: Mapping[int, float], taken: Iterable[Mapping[int, float]]
) -> dict[int, float]:
    """What each GPU has left once the ``taken`` shares (``need_by_gpu`` of each resident)
    are counted; never below 0."""
    left = dict(capacity)
    for share in taken:
        for g, gb in share.items():
            if g in left:
                left[g] = max(0.0, left[g] - gb)
    return left


def fits(share: Mapping[int, float], free: Mapping[int, float]) -> bool:
    """Does a ``need_by_gpu`` share fit in ``free`` on every GPU it uses?"""
    return all(gb <= free.get(g, 0.0) for g, gb in share.items())
