"""Which build of studioctl runs: the commit and the build time ``/version`` reports.

Computed once (the daemon calls :func:`build_info` when it builds the gateway), never per
request, and never by running git: from the environment (``STUDIOCTL_BUILD_SHA``,
``STUDIOCTL_BUILD_TIME``, set by a package or an image build), else the commit a pip
install from git recorded (``direct_url.json``'s ``vcs_info.commit_id``), else the git
checkout the package is imported from (``.git/HEAD`` and its ref read as files). What none
of them knows is ``None``; a build time is known only from the environment.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV_BUILD_SHA", "ENV_BUILD_TIME", "build_info", "git_head"]

ENV_BUILD_SHA = "STUDIOCTL_BUILD_SHA"
ENV_BUILD_TIME = "STUDIOCTL_BUILD_TIME"

_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1 or SHA-256
_MAX_TEXT = 100  # a value from the environment, shown as is: bounded


def build_info(
    env: Mapping[str, str] | None = None, package_dir: Path | None = None
) -> dict[str, str | None]:
    """``{"build_sha": …, "build_time": …}`` (see the module docstring for the sources)."""
    env = os.environ if env is None else env
    sha = (env.get(ENV_BUILD_SHA) or "").strip()[:_MAX_TEXT] or None
    built = (env.get(ENV_BUILD_TIME) or "").strip()[:_MAX_TEXT] or None
    if sha is None:
        sha = _installed_commit()
    if sha is None:
        here = package_dir if package_dir is not None else Path(__file__).resolve().parent
        sha = git_head(here.parent.parent)  # src/studioctl → the checkout
    return {"build_sha": sha, "build_time": built}


def _installed_commit() -> str | None:
    """The commit of a ``pip install git+…`` (its ``direct_url.json``), if that is how."""
    from importlib import metadata

    try:
        text = metadata.distribution("studioctl").read_text("direct_url.json")
        vcs = json.loads(text or "{}").get("vcs_info") or {}
    except (metadata.PackageNotFoundError, ValueError, AttributeError, OSError):
        return None
    commit = vcs.get("commit_id") if isinstance(vcs, dict) else None
    return commit if isinstance(commit, str) and _SHA.fullmatch(commit) else None


def git_head(root: Path) -> str | None:
    """The commit checked out in the git work tree at ``root`` (a worktree's ``.git`` file
    followed), read from files only; None when it is not one or cannot be read."""
    try:
        git = root / ".git"
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            line = git.read_text().strip()
            if not line.startswith("gitdir:"):
                return None
            git = (root / line[len("gitdir:") :].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if _SHA.fullmatch(head):  # detached
            return head
        if not head.startswith("ref: "):
            return None
        return _ref(git, head[5:].strip())
    except OSError:
        return None


def _ref(git: Path, ref: str) -> str | None:
    common = git
    if (git / "commondir").is_file():  # a worktree keeps refs in the main repository
        common = (git / (git / "commondir").read_text().strip()).resolve()
    for base in (git, common):
        path = base / ref
        if path.is_file():
            value = path.read_text().strip()
            return value if _SHA.fullmatch(value) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _SHA.fullmatch(sha):
                return sha
    return None
