"""`studioctl recipe …` through typer's runner (and once through the real entry point)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from studioctl.cli.app import app
from studioctl.errors import StudioError
from studioctl.recipes import load_recipe_file

RUNNER = CliRunner()

TINY = "backend: vllm\nmodel: org/tiny\nmax_model_len: 512\n"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("STUDIOCTL_HOME", str(h))
    for name in ("STUDIOCTL_RECIPES_DIRS", "STUDIOCTL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return h


@pytest.fixture
def user_dir(home: Path) -> Path:
    d = home / "config" / "recipes"
    d.mkdir(parents=True)
    return d


def run(*args: str, input: str | None = None) -> Result:
    return RUNNER.invoke(app, ["recipe", *args], input=input)


def code(result: Result) -> int:
    """The exit code `studioctl` would exit with (main() maps StudioError to its code)."""
    if isinstance(result.exception, StudioError):
        return result.exception.exit_code
    return result.exit_code


def error(result: Result) -> StudioError:
    assert isinstance(result.exception, StudioError), result.output
    return result.exception


def test_new_writes_a_commented_valid_recipe(user_dir: Path) -> None:
    result = run(
        "new", "qwen-7b", "--backend", "vllm", "--model", "Qwen/Qwen2.5-7B-Instruct",
        "--gpus", "0,1", "--tp", "2", "--max-model-len", "8192", "--port", "18123",
    )  # fmt: skip
    assert code(result) == 0, result.output
    path = user_dir / "qwen-7b.yaml"
    assert result.stdout.strip() == str(path)
    text = path.read_text()
    assert "# gpu_memory_utilization: 0.9" in text  # the keys not given, commented out
    r = load_recipe_file(path)
    assert (r.id, r.backend, r.model) == ("qwen-7b", "vllm", "Qwen/Qwen2.5-7B-Instruct")
    assert (r.gpus, r.tensor_parallel_size, r.max_model_len, r.port) == ([0, 1], 2, 8192, 18123)


def test_new_refuses_to_overwrite(user_dir: Path, tmp_path: Path) -> None:
    args = ["new", "r", "--backend", "sglang", "--model", "org/m"]
    assert code(run(*args)) == 0
    again = run(*args[:-1], "org/other")
    assert code(again) == 5
    assert "already exists" in error(again).message
    assert load_recipe_file(user_dir / "r.yaml").model == "org/m"
    assert code(run(*args[:-1], "org/other", "--force")) == 0
    assert load_recipe_file(user_dir / "r.yaml").model == "org/other"
    # The same id in another folder would be a duplicate: refused even with --force.
    other = tmp_path / "other"
    clash = run(*args, "--dir", str(other), "--force")
    assert code(clash) == 5
    assert not (other / "r.yaml").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["Bad_Id", "--backend", "vllm", "--model", "m"], "ID: invalid recipe id 'Bad_Id'"),
        (["r", "--backend", "tgi", "--model", "m"], "--backend: Input should be 'vllm'"),
        (["r", "--backend", "vllm", "--model", "m", "--gpus", "0,x"], "--gpus: expected"),
        (["r", "--backend", "vllm", "--model", "m", "--tp", "0"], "--tp: Input should be"),
        (["r", "--backend", "vllm", "--model", "./missing"], "--model: path does not exist"),
        (["r", "--backend", "vllm", "--model", "m", "--python", "/no/py"], "--python: python not"),
    ],
)
def test_new_bad_options(user_dir: Path, args: list[str], words: str) -> None:
    result = run("new", *args)
    assert code(result) == 2
    assert words in error(result).message
    assert list(user_dir.iterdir()) == []


def test_list_json_and_table(user_dir: Path) -> None:
    (user_dir / "b.yaml").write_text(TINY + "aliases: [tiny]\ngpus: [1]\n")
    (user_dir / "a.yaml").write_text(TINY.replace("vllm", "sglang"))
    result = run("list", "--json")
    assert code(result) == 0, result.output
    data = json.loads(result.stdout)
    assert [(d["id"], d["backend"]) for d in data] == [("a", "sglang"), ("b", "vllm")]
    assert data[1]["gpus"] == [1] and data[1]["aliases"] == ["tiny"]
    assert data[1]["source"] == str(user_dir / "b.yaml")
    assert data[1]["served_name"] == "b"
    table = run("list").stdout.splitlines()
    assert table[0].split() == ["ID", "BACKEND", "SERVED", "AS", "MODEL", "GPUS", "PORT"]
    assert table[2].split() == ["b", "vllm", "b,tiny", "org/tiny", "1", "auto"]


def test_list_reports_bad_files(user_dir: Path) -> None:
    (user_dir / "good.yaml").write_text(TINY)
    (user_dir / "bad.yaml").write_text(TINY + "port: high\n")
    result = run("list", "--json")
    assert code(result) == 1
    assert [d["id"] for d in json.loads(result.stdout)] == ["good"]
    assert f"error: {user_dir / 'bad.yaml'}:4: port: must be a valid integer" in result.stderr


def test_show(user_dir: Path) -> None:
    (user_dir / "s.yaml").write_text(TINY + "served_model_name: tiny\n")
    result = run("show", "s", "--json")
    assert code(result) == 0, result.output
    data = json.loads(result.stdout)
    assert data["id"] == "s" and data["max_model_len"] == 512
    assert data["host"] == "127.0.0.1" and data["readiness_timeout_s"] == 900
    assert data["model_names"] == ["tiny"]
    assert data["python_executable"] == sys.executable
    assert data["content_hash"] == load_recipe_file(user_dir / "s.yaml").content_hash()
    human = run("show", "s").stdout
    assert "max_model_len" in human and "512" in human
    missing = run("show", "nope")
    assert code(missing) == 3
    assert "no recipe 'nope' (known: s)" in error(missing).message


def editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> None:
    """$EDITOR: a script that replaces `old` with `new` in the file it is given."""
    script = tmp_path / "ed.py"
    script.write_text(
        "import sys\n"
        "p = sys.argv[1]\n"
        "t = open(p).read()\n"
        f"open(p, 'w').write(t.replace({old!r}, {new!r}))\n"
    )
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")


def test_edit_saves_a_valid_edit(
    user_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = user_dir / "e.yaml"
    path.write_text("# keep me\n" + TINY)
    editor(tmp_path, monkeypatch, "max_model_len: 512", "max_model_len: 1024")
    result = run("edit", "e")
    assert code(result) == 0, result.output
    assert result.stdout.strip() == f"saved {path}"
    assert path.read_text() == "# keep me\n" + TINY.replace("512", "1024")


def test_edit_keeps_a_bad_edit_aside(
    user_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = user_dir / "e.yaml"
    path.write_text(TINY)
    editor(tmp_path, monkeypatch, "max_model_len: 512", "max_model_len: lots")
    result = run("edit", "e")
    assert code(result) == 1
    err = error(result)
    rejected = user_dir / "e.yaml.rejected"
    assert (err.file, err.line, err.key) == (str(rejected), 3, "max_model_len")
    assert err.hint == f"{path} is unchanged; your edit is kept in {rejected}"
    assert path.read_text() == TINY
    assert rejected.read_text() == TINY.replace("512", "lots")
    assert code(run("list")) == 0  # the .rejected file is not a recipe


def test_edit_without_changes(
    user_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (user_dir / "e.yaml").write_text(TINY)
    editor(tmp_path, monkeypatch, "not there", "x")
    result = run("edit", "e")
    assert code(result) == 0
    assert result.stdout.startswith("no changes")


def test_edit_failing_editor(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (user_dir / "e.yaml").write_text(TINY)
    monkeypatch.setenv("VISUAL", "false")
    result = run("edit", "e")
    assert code(result) == 1
    assert "the editor exited with 1" in error(result).message


def test_validate(user_dir: Path, tmp_path: Path) -> None:
    (user_dir / "good.yaml").write_text(TINY)
    ok = run("validate", "--json")
    assert code(ok) == 0
    assert json.loads(ok.stdout) == {
        "ok": True,
        "results": [
            {
                "target": "good",
                "id": "good",
                "file": str(user_dir / "good.yaml"),
                "ok": True,
                "error": None,
            }
        ],
    }
    (user_dir / "bad.yaml").write_text(TINY + "gpu_memory_utilization: 2\n")
    outside = tmp_path / "x.yaml"
    outside.write_text(TINY + "bogus: 1\n")
    bad = run("validate", "--json")
    assert code(bad) == 1
    results = json.loads(bad.stdout)["results"]
    assert [r["ok"] for r in results] == [True, False]
    assert results[1]["error"]["file"] == str(user_dir / "bad.yaml")
    assert (results[1]["error"]["line"], results[1]["error"]["key"]) == (
        4,
        "gpu_memory_utilization",
    )
    named = run("validate", "good", str(outside), "missing")
    assert code(named) == 1
    lines = named.stdout.splitlines()
    assert lines[0].startswith("ok     good")
    assert lines[1] == f"error  {outside}:4: bogus: unknown key"
    assert "error  no recipe 'missing'" in named.stdout


def test_rm(user_dir: Path) -> None:
    (user_dir / "gone.yaml").write_text("not: [valid")
    keep = run("rm", "gone", input="n\n")
    assert code(keep) == 1
    assert (user_dir / "gone.yaml").exists()
    result = run("rm", "gone", "--yes")
    assert code(result) == 0
    assert result.stdout.strip() == f"removed {user_dir / 'gone.yaml'}"
    assert not (user_dir / "gone.yaml").exists()
    assert code(run("rm", "gone", "--yes")) == 3


def test_import_and_export(user_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("# my comment\n" + TINY + "seed: ${SEED:-3}\n")
    studio = tmp_path / "studio.json"
    studio.write_text(
        json.dumps(
            {
                "id": "glm",
                "model_path": "zai-org/GLM-4.5-Air",
                "backend": "sglang",
                "tp": 2,
                "port": 8000,
                "extra_args": {"enable-metrics": True},
            }
        )
    )
    result = run("import", str(mine), str(studio))
    assert code(result) == 0, result.output
    assert result.stdout.splitlines() == [
        f"mine: {mine} -> {user_dir / 'mine.yaml'}",
        f"glm: {studio} -> {user_dir / 'glm.yaml'}",
    ]
    assert "note: port: dropped" in result.stderr
    assert (user_dir / "mine.yaml").read_text() == mine.read_text()
    glm = load_recipe_file(user_dir / "glm.yaml")
    assert (glm.backend, glm.tensor_parallel_size, glm.engine_args) == (
        "sglang",
        2,
        {"enable-metrics": True},
    )
    assert code(run("import", str(mine))) == 5
    assert code(run("import", str(mine), "--force")) == 0

    exported = run("export", "mine")
    assert exported.stdout == mine.read_text()  # comments and ${SEED:-3} kept
    as_json = run("export", "glm", "--json")
    data = json.loads(as_json.stdout)
    assert data["model"] == "zai-org/GLM-4.5-Air" and "source" not in data
    # JSON export imports again, as the same recipe
    again = tmp_path / "again" / "glm.json"
    again.parent.mkdir()
    again.write_text(as_json.stdout)
    other = tmp_path / "other"
    assert code(run("import", str(again), "--dir", str(other), "--force")) == 5  # same id
    (user_dir / "glm.yaml").unlink()
    assert code(run("import", str(again), "--dir", str(other))) == 0
    assert load_recipe_file(other / "glm.yaml").content_hash() == glm.content_hash()


def test_import_checks_everything_before_writing(user_dir: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(TINY)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "model_path": "m",\n  "gpu_count": 2\n}\n')
    result = run("import", str(good), str(bad))
    assert code(result) == 1
    err = error(result)
    assert (err.file, err.line, err.key) == (str(bad), 3, "gpu_count")
    assert list(user_dir.iterdir()) == []


def test_real_entry_point_exit_code_and_message(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env["STUDIOCTL_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "studioctl", "recipe", "show", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: no recipe 'nope' (no recipes found)")
