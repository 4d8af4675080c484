"""``studioctl launch ./my.yaml`` and ``switch A ./b.yaml`` (issue 9.2): a recipe file outside
the recipe folders, named by a path relative to the user's directory, against a daemon whose
working directory is ``/`` (as under systemd). The CLI reads and validates the file and sends
it; the daemon validates it again, runs it, and the launch stages are shown."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon_helpers import Daemon, json_lines, running_daemon
from standin.helpers import STANDIN_DIR
from studioctl.errors import EXIT_ERROR, EXIT_NOT_FOUND, StudioError, UsageError

pytestmark = pytest.mark.integration

VLLM_STAGES = ["started", "config", "engine", "loading", "weights", "warmup", "api"]


def assert_stages(stages: list[str]) -> None:
    """The launch's stages, in order. The last one ("API server up") may be logged after the
    engine already answers its readiness probe, and so after the stream's end on a loaded
    machine: everything up to the warm-up must be there."""
    assert stages == VLLM_STAGES[: len(stages)], stages
    assert len(stages) >= VLLM_STAGES.index("warmup") + 1, stages


@pytest.fixture(scope="module")
def root_daemon() -> Iterator[Daemon]:
    with running_daemon(cwd="/") as d:
        yield d


@pytest.fixture
def d(root_daemon: Daemon) -> Iterator[Daemon]:
    yield root_daemon
    root_daemon.evict_all()


@pytest.fixture
def project() -> Iterator[Path]:
    """A user's folder outside every recipe folder, with a local model directory."""
    folder = Path(tempfile.mkdtemp(prefix="sc-proj-", dir="/tmp"))
    (folder / "weights").mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_recipe(folder: Path, name: str, **fields: Any) -> Path:
    body: dict[str, Any] = {
        "backend": "vllm",
        "model": "./weights",  # relative to the recipe file's folder
        "python": sys.executable,
        "readiness_timeout_s": 30,
        "env": {"PYTHONPATH": str(STANDIN_DIR), "STANDIN_STARTUP_S": "0.3"},
    }
    body.update(fields)
    path = folder / name
    path.write_text(yaml.safe_dump(body))
    return path


def cli_in(d: Daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``studioctl ARGS`` run from ``cwd`` (the user's folder, not the daemon's)."""
    return subprocess.run(
        [sys.executable, "-m", "studioctl", *args],
        env=d.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_launch_a_relative_path_streams_its_stages(d: Daemon, project: Path) -> None:
    write_recipe(project, "my-model.yaml")
    r = cli_in(d, project, "launch", "./my-model.yaml", "--json")
    assert r.returncode == 0, r.stderr
    lines = json_lines(r.stdout)
    result = lines[-1]
    d.track(result)
    assert result["type"] == "result" and result["state"] == "ready"
    assert result["recipe"] == "my-model" and result["id"] == "my-model-1"
    # The stages of the recipe's id, although the argument was a path.
    stages = [m["data"]["stage"] for m in lines[:-1] if m.get("kind") == "stage"]
    assert_stages(stages)
    # The model path is the file's folder's, not the daemon's working directory's.
    launch = next(m for m in lines if m.get("kind") == "launch")
    assert str(project / "weights") in launch["data"]["command"]


def test_launch_a_path_shows_the_stages_as_text(d: Daemon, project: Path) -> None:
    write_recipe(project, "text-model.yml")
    r = cli_in(d, project, "launch", "text-model.yml")  # a bare file name is a path too
    assert r.returncode == 0, r.stderr
    d.instance("text-model-1")
    assert "text-model-1: process started" in r.stdout
    assert "text-model-1: loading weights" in r.stdout
    assert "text-model-1 ready on http://" in r.stdout


def test_switch_to_a_relative_path(d: Daemon, project: Path) -> None:
    d.recipe("sw-from")
    d.launch("sw-from")
    write_recipe(project, "sw-to.yaml")
    r = cli_in(d, project, "switch", "sw-from", "./sw-to.yaml", "--json")
    assert r.returncode == 0, r.stderr
    lines = json_lines(r.stdout)
    result = lines[-1]
    assert result["type"] == "result"
    d.track(result["instance"])
    assert result["instance"]["recipe"] == "sw-to"
    assert result["instance"]["state"] == "ready"
    assert any(m.get("recipe_id") == "sw-to" and m.get("kind") == "stage" for m in lines)
    assert d.instance(result["from"])["state"] == "stopped"


def test_launch_dry_run_of_a_relative_path(d: Daemon, project: Path) -> None:
    write_recipe(project, "dry-model.yaml", port=18555)
    out = json.loads(cli_in(d, project, "launch", "--dry-run", "./dry-model.yaml", "--json").stdout)
    assert out["recipe"] == "dry-model"
    assert str(project / "weights") in out["argv"]


def test_a_missing_file_is_not_found_and_nothing_is_sent(d: Daemon, project: Path) -> None:
    before = len(d.events())
    r = cli_in(d, project, "launch", "./nope.yaml")
    assert r.returncode == EXIT_NOT_FOUND
    assert f"no recipe file ./nope.yaml ({project / 'nope.yaml'})" in r.stderr
    r = cli_in(d, project, "launch", "nope.yaml")
    assert r.returncode == EXIT_NOT_FOUND
    assert "written without .yaml: nope" in r.stderr
    assert len(d.events()) == before


def test_an_invalid_file_is_refused_by_the_cli_with_its_line(d: Daemon, project: Path) -> None:
    path = write_recipe(project, "bad.yaml", backend="nope")
    before = len(d.events())
    r = cli_in(d, project, "launch", "./bad.yaml")
    assert r.returncode == EXIT_ERROR  # the README's code for an invalid recipe file
    assert f"{path}:1: backend:" in r.stderr
    assert len(d.events()) == before


def test_an_invalid_recipe_read_by_the_daemon_exits_1_too(d: Daemon) -> None:
    path = d.recipe("bad-in-folder", backend="nope")
    r = d.cli("launch", "bad-in-folder")
    assert r.returncode == EXIT_ERROR, r.stderr  # as when the CLI reads it (was 2)
    assert f"{path}:" in r.stderr and "backend" in r.stderr


# ------------------------------------------------------------------ the daemon's side


def post_launch(d: Daemon, body: dict[str, Any]) -> Any:
    with d.client() as c:
        return c.request("POST", "/instances", json_body={"wait": False, **body})


def test_daemon_refuses_a_relative_path_it_cannot_resolve(d: Daemon) -> None:
    with pytest.raises(UsageError, match="relative"):
        post_launch(d, {"recipe": "./my.yaml"})


def test_daemon_validates_a_sent_file_again(d: Daemon, project: Path) -> None:
    good = write_recipe(project, "sent.yaml")
    text = good.read_text()
    bad = text.replace("backend: vllm", "backend: nope")
    label = f"{good} (as sent)"
    with pytest.raises(StudioError, match="backend") as info:
        post_launch(d, {"recipe_file": {"path": str(good), "text": bad}})
    assert info.value.code == "invalid_recipe" and label in info.value.message
    # The id is the file name's, as for a file in a recipe folder.
    with pytest.raises(StudioError, match="does not match the file name") as info:
        post_launch(d, {"recipe_file": {"path": str(good), "text": "id: other\n" + text}})
    assert info.value.code == "invalid_recipe"
    # Local paths must exist where the daemon (and so the engine) runs.
    gone = text.replace("./weights", "./missing-weights")
    with pytest.raises(StudioError, match="model path does not exist") as info:
        post_launch(d, {"recipe_file": {"path": str(good), "text": gone}})
    assert info.value.code == "invalid_recipe"
    for sent in (
        {"path": "sent.yaml", "text": text},  # relative
        {"path": str(good), "text": 7},
        {"path": str(good) + ".sh", "text": text},
        "sent.yaml",
        {"path": str(good), "text": text + "#" * (300 * 1024)},
    ):
        with pytest.raises(UsageError):
            post_launch(d, {"recipe_file": sent})
    with pytest.raises(UsageError, match="differ"):
        post_launch(d, {"recipe": "else", "recipe_file": {"path": str(good), "text": text}})
    assert not [i for i in d.instances() if i["recipe"] == "sent"]


def test_daemon_launches_an_absolute_path_and_streams_its_id(d: Daemon, project: Path) -> None:
    path = write_recipe(project, "abs-model.yaml")
    from studioctl.api.models import LaunchRequest

    with d.client() as c:
        msgs = list(c.launch_stream(LaunchRequest(recipe=str(path))))
    result = msgs[-1]
    assert result["type"] == "result", result
    d.track(result["result"])
    assert_stages([m["data"]["stage"] for m in msgs if m.get("kind") == "stage"])


# ------------------------------------------------------------------ not over TCP


def test_recipe_files_and_paths_are_refused_over_the_admin_tcp_api(project: Path) -> None:
    """The admin token must not become a way to run any command (a sent recipe's python:)
    or read any file the daemon can: over TCP, recipes are launched by id only."""
    from gateway_daemon.helpers import ADMIN_TOKEN, gateway_daemon, request

    good = write_recipe(project, "tcp-model.yaml")
    text = good.read_text()
    with gateway_daemon({"by-id": {}}, admin_token=ADMIN_TOKEN) as gd:
        hdr = {"X-Admin-Token": ADMIN_TOKEN}
        for body in (
            {"recipe_file": {"path": str(good), "text": text}, "wait": False},
            {"recipe": str(good), "wait": False},
        ):
            r = request(gd, "POST", "/admin/instances", body=body, headers=hdr)
            assert r.status_code == 400, r.text
            assert "only on the daemon's control socket" in r.json()["error"]["message"]
        r = request(
            gd,
            "POST",
            "/admin/switch",
            body={"from": "x", "to": "t", "to_file": {"path": str(good), "text": text}},
            headers=hdr,
        )
        assert r.status_code == 400 and "control socket" in r.text
        # Adopting names a recipe too: by id only over TCP (pid 1 is never adopted here).
        r = request(gd, "POST", "/admin/adopt", body={"pid": 1, "recipe": str(good)}, headers=hdr)
        assert r.status_code == 400 and "control socket" in r.text, r.text
        assert gd.instances() == []
        # By id it is the admin API it was.
        r = request(gd, "POST", "/admin/instances", body={"recipe": "by-id"}, headers=hdr)
        assert r.status_code == 201, r.text
        gd.track(r.json())
        assert r.json()["state"] == "ready"
        # And the same file through the socket is fine.
        with gd.client() as c:
            out = c.request("POST", "/instances", json_body={"recipe": str(good), "wait": False})
        gd.track(out)
        assert out["recipe"] == "tcp-model"
