"""Memory need and capacity: table-driven, with a tiny Llama config.json (the values of
scripts/make_tiny_model.py) and the NVML fake for the GPUs' memory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fakes import fake_pynvml
from studioctl import gpu
from studioctl.lifecycle.memory import (
    GIB,
    capacity_gb,
    free_gb,
    memory_need_gb,
    model_params,
    read_model_config,
)
from studioctl.recipes import Recipe
from studioctl.settings import load_settings

# scripts/make_tiny_model.py's LlamaConfig as saved (vocab 487 after the tokenizer).
TINY = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "vocab_size": 487,
    "tie_word_embeddings": True,
    "dtype": "float32",
}
# embeddings 487x128 (tied) + 2 x (q,o 2x128x128 + k,v 2x128x64 + MLP 3x128x256 + 2 norms)
# + the final norm: the safetensors file of the real tiny model holds exactly this many.
TINY_PARAMS = 487 * 128 + 2 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 256 + 2 * 128) + 128


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY), encoding="utf-8")
    return d


def recipe(**kw: Any) -> Recipe:
    return Recipe.model_validate({"id": "r", "backend": "vllm", "model": "org/none", **kw})


def test_tiny_params_match_the_real_weights() -> None:
    assert model_params(TINY) == TINY_PARAMS == 357_888
    # 357,888 float32 parameters: the tiny model's model.safetensors minus its JSON header.
    assert TINY_PARAMS * 4 == 1_431_552


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({**TINY, "tie_word_embeddings": False}, TINY_PARAMS + 487 * 128),  # own output head
        ({"hidden_size": 64}, None),  # not a decoder config
        ({**TINY, "hidden_size": True}, None),  # a boolean is no size
        ({"text_config": TINY, "vision_config": {}}, TINY_PARAMS),  # multimodal: the LM
        (  # experts: 4 x MLP + the router, instead of one MLP
            {**TINY, "num_local_experts": 4},
            TINY_PARAMS + 2 * (3 * 128 * 256 * 3 + 128 * 4),
        ),
        (  # an ungated MLP (GPT-2 style): two matrices
            {**TINY, "model_type": "gpt2"},
            TINY_PARAMS - 2 * 128 * 256,
        ),
    ],
)
def test_model_params_table(config: dict[str, Any], expected: int | None) -> None:
    assert model_params(config) == expected


@pytest.mark.parametrize(
    ("fields", "learned", "gpu_total", "source", "gb"),
    [
        ({"vram_gb": 20}, 30.0, 80.0, "recipe", 20.0),  # the recipe's own figure wins
        ({}, 30.0, 80.0, "learned", 30.0),
        ({}, 0.0, None, "unknown", None),  # a zero peak is no figure
        ({}, None, None, "unknown", None),  # a hub id not in the cache, no GPU
        # On a GPU the engine takes its fraction of each GPU, config or not.
        ({}, None, 80.0, "estimate", 0.9 * 80),
        ({"gpu_memory_utilization": 0.5}, None, 80.0, "estimate", 40.0),
        ({"gpu_memory_utilization": 0.5, "tensor_parallel_size": 2}, None, 80.0, "estimate", 80),
    ],
)
def test_need_table(
    fields: dict[str, Any],
    learned: float | None,
    gpu_total: float | None,
    source: str,
    gb: float | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    need = memory_need_gb(recipe(**fields), learned_gb=learned, gpu_total_gb=gpu_total)
    assert need.source == source
    assert need.gb == (pytest.approx(gb) if gb is not None else None)
    assert need.gpus == (fields.get("tensor_parallel_size") or 1)
    assert need.detail


def test_estimate_from_a_local_config_on_a_cpu(tiny_dir: Path) -> None:
    r = recipe(model=str(tiny_dir), dtype="float32", env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    need = memory_need_gb(r, learned_gb=None, gpu_total_gb=None)
    assert need.source == "estimate"
    assert need.gb == pytest.approx(TINY_PARAMS * 4 / GIB + 1.0)
    assert "CPU KV cache 1 GiB" in need.detail
    # Without the KV cache variable: the weights alone.
    bare = memory_need_gb(recipe(model=str(tiny_dir)), learned_gb=None, gpu_total_gb=None)
    assert bare.gb == pytest.approx(TINY_PARAMS * 4 / GIB)


def test_weights_beyond_the_fraction_are_the_need(tmp_path: Path) -> None:
    big = {
        **TINY,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    d = tmp_path / "llama-70b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(big), encoding="utf-8")
    need = memory_need_gb(recipe(model=str(d)), learned_gb=None, gpu_total_gb=80.0)
    params = model_params(big)
    assert params is not None and 70e9 < params < 71e9  # Llama 3.1 70B
    assert need.gb == pytest.approx(params * 2 / GIB)  # 131 GiB: more than 0.9 x 80
    # The same model over 4 GPUs: the engine takes 0.9 x 80 of each, more than the weights.
    tp4 = memory_need_gb(
        recipe(model=str(d), tensor_parallel_size=4), learned_gb=None, gpu_total_gb=80.0
    )
    assert tp4.gb == pytest.approx(0.9 * 80 * 4) and tp4.per_gpu_gb == pytest.approx(72.0)


@pytest.mark.parametrize(
    ("fields", "config", "on_gpu_bytes"),
    [
        ({}, {"dtype": "float32"}, 2),  # auto: a 32-bit model runs in 16 bits on a GPU
        ({"dtype": "float32"}, {}, 4),
        ({}, {"torch_dtype": "bfloat16"}, 2),
        ({}, {"quantization_config": {"quant_method": "awq", "bits": 4}}, 0.5),
        ({"quantization": "fp8"}, {}, 1),
    ],
)
def test_bytes_per_parameter(
    fields: dict[str, Any], config: dict[str, Any], on_gpu_bytes: float, tmp_path: Path
) -> None:
    d = tmp_path / "m"
    d.mkdir()
    merged = {k: v for k, v in TINY.items() if k != "dtype"} | config
    (d / "config.json").write_text(json.dumps(merged), encoding="utf-8")
    # A tiny GPU fraction, so that the weights are the need.
    r = recipe(model=str(d), gpu_memory_utilization=1e-9, **fields)
    need = memory_need_gb(r, learned_gb=None, gpu_total_gb=80.0)
    assert need.gb == pytest.approx(TINY_PARAMS * on_gpu_bytes / GIB)


def test_config_from_the_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(TINY), encoding="utf-8")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123\n", encoding="utf-8")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "nowhere"))
    assert read_model_config(recipe(model="org/tiny")) is None
    # The recipe's own env names the cache.
    r = recipe(model="org/tiny", env={"HF_HUB_CACHE": str(cache)}, dtype="float32")
    assert read_model_config(r) == TINY
    need = memory_need_gb(r, learned_gb=None, gpu_total_gb=None)
    assert need.source == "estimate" and need.gb == pytest.approx(TINY_PARAMS * 4 / GIB)


def test_a_huge_or_broken_config_is_no_estimate(tiny_dir: Path) -> None:
    (tiny_dir / "config.json").write_text("{not json", encoding="utf-8")
    assert read_model_config(recipe(model=str(tiny_dir))) is None
    (tiny_dir / "config.json").write_text(" " * (2 * 1024 * 1024) + "{}", encoding="utf-8")
    assert read_model_config(recipe(model=str(tiny_dir))) is None


def snapshot(fake: fake_pynvml.FakePynvml) -> gpu.HostGpus:
    with gpu.Nvml(module=fake) as nvml:
        return nvml.snapshot()


def test_capacity_from_nvml_totals() -> None:
    settings = load_settings(env={})
    host = snapshot(fake_pynvml.two_gpus())
    assert capacity_gb(host, settings) == {0: 80.0, 1: 80.0}
    assert free_gb(host) == {0: pytest.approx(9.0), 1: pytest.approx(78.0)}
    consumer = snapshot(fake_pynvml.unsupported_metrics())
    assert capacity_gb(consumer, settings) == {0: 8.0}


def test_a_lost_gpu_has_no_capacity() -> None:
    fake = fake_pynvml.two_gpus()
    fake.lose(1)
    host = snapshot(fake)
    assert capacity_gb(host, load_settings(env={})) == {0: 80.0, 1: 0.0}
    assert 1 not in free_gb(host)


@pytest.mark.parametrize("fake", [fake_pynvml.no_driver, fake_pynvml.no_gpus])
def test_host_without_gpus_has_one_pseudo_gpu(fake: Any) -> None:
    host = snapshot(fake())
    assert capacity_gb(host, load_settings(env={})) == {0: math.inf}  # unlimited
    limited = load_settings(env={"STUDIOCTL_HOST_CAPACITY_GB": "12"})
    assert capacity_gb(host, limited) == {0: 12.0}
    assert capacity_gb(None, limited) == {0: 12.0}
    assert free_gb(host) == {}


def test_need_to_dict_rounds_and_splits() -> None:
    need = memory_need_gb(
        recipe(vram_gb=30, tensor_parallel_size=2, gpus=[0, 1]), learned_gb=None, gpu_total_gb=80
    )
    assert need.to_dict() == {
        "gb": 30.0,
        "per_gpu_gb": 15.0,
        "gpus": 2,
        "source": "recipe",
        "detail": "vram_gb: 30",
    }
