"""``/version``'s build sha and time (``studioctl.buildinfo``): the environment first, then
the git checkout read as files (a plain repository, a worktree, packed refs, detached)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from studioctl.buildinfo import build_info, git_head

SHA = "a" * 40


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "f").write_text("x")
    git(root, "add", "f")
    git(root, "commit", "-qm", "one")
    return root


def test_the_environment_wins_and_is_bounded(tmp_path: Path) -> None:
    env = {"STUDIOCTL_BUILD_SHA": SHA, "STUDIOCTL_BUILD_TIME": "2026-11-30T00:00:00Z"}
    assert build_info(env, tmp_path) == {"build_sha": SHA, "build_time": "2026-11-30T00:00:00Z"}
    long = build_info({"STUDIOCTL_BUILD_SHA": "x" * 5000}, tmp_path)
    assert len(long["build_sha"] or "") == 100


def test_the_checkout_the_package_runs_from(repo: Path) -> None:
    package = repo / "src" / "studioctl"
    package.mkdir(parents=True)
    info = build_info({}, package)
    assert info["build_sha"] in (git(repo, "rev-parse", "HEAD"), None)  # None: pip-installed
    assert info["build_time"] is None
    assert git_head(repo) == git(repo, "rev-parse", "HEAD")


def test_packed_refs_detached_worktree_and_not_a_checkout(repo: Path, tmp_path: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert git_head(repo) == head
    tree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "side", str(tree))
    (tree / "g").write_text("y")
    git(tree, "add", "g")
    git(tree, "commit", "-qm", "two")
    assert git_head(tree) == git(tree, "rev-parse", "HEAD") != head
    git(repo, "checkout", "-q", "--detach")
    assert git_head(repo) == head
    assert git_head(tmp_path / "nowhere") is None
