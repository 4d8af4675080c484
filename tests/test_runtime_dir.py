"""The runtime dir and the control socket: a folder someone else made (or may write to) is
refused, never followed through a symbolic link; the socket is 0600 and replaces only a
stale socket. Also: folders studioctl creates under the user's home are 0700.

Real directories, real ownership (the tests run as root in CI: ``os.chown`` to nobody) and
real sockets; no mocks.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from studioctl import paths
from studioctl.daemon import bind_unix
from studioctl.errors import ConflictError, StudioError

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short folder: AF_UNIX paths are limited to 108 bytes."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- private_dir


def test_private_dir_is_created_0700(short_tmp: Path) -> None:
    d = paths.private_dir(short_tmp / "studioctl-1")
    assert d.is_dir() and mode_of(d) == 0o700
    assert paths.private_dir(d) == d  # an existing folder of ours is fine (0755 too)
    os.chmod(d, 0o755)
    assert paths.private_dir(d) == d


@needs_root
def test_private_dir_owned_by_another_user_is_refused(short_tmp: Path) -> None:
    d = short_tmp / "studioctl-0"
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(ConflictError) as err:
        paths.private_dir(d)
    msg = err.value.message
    assert str(d) in msg and f"owner uid {NOBODY}" in msg and "mode 0700" in msg
    assert err.value.code == "unsafe_runtime_dir"
    assert "XDG_RUNTIME_DIR" in (err.value.hint or "")


def test_private_dir_writable_by_others_is_refused(short_tmp: Path) -> None:
    d = short_tmp / "studioctl-0"
    d.mkdir()
    os.chmod(d, 0o777)  # as another user's pre-created folder would be
    with pytest.raises(ConflictError) as err:
        paths.private_dir(d)
    assert str(d) in err.value.message and "mode 0777" in err.value.message
    assert "writable by group and others" in err.value.message
    assert mode_of(d) == 0o777  # refused, not "fixed" behind the owner's back


def test_private_dir_symlink_is_refused(short_tmp: Path) -> None:
    target = short_tmp / "elsewhere"
    target.mkdir(mode=0o700)  # even a good folder of ours: the link itself is the problem
    link = short_tmp / "studioctl-0"
    link.symlink_to(target)
    with pytest.raises(ConflictError) as err:
        paths.private_dir(link)
    assert f"refusing the runtime dir {link}: it is a symbolic link" in err.value.message


def test_private_dir_without_create_checks_but_makes_nothing(short_tmp: Path) -> None:
    missing = short_tmp / "studioctl-9"
    assert paths.private_dir(missing, create=False) == missing
    assert not os.path.lexists(missing)
    missing.mkdir()
    os.chmod(missing, 0o777)
    with pytest.raises(ConflictError, match="writable by group and others"):
        paths.private_dir(missing, create=False)


# --------------------------------------------------------------------------- bind_unix


def test_bind_unix_makes_a_0600_socket_in_a_private_dir(short_tmp: Path) -> None:
    path = short_tmp / "run" / "control.sock"
    sock = bind_unix(path)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode_of(path) == 0o600
        assert mode_of(path.parent) == 0o700
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))  # it listens
    finally:
        sock.close()
    # A stale socket (a daemon that died) is replaced.
    sock = bind_unix(path)
    sock.close()


@needs_root
def test_bind_unix_refuses_a_run_dir_of_another_user(short_tmp: Path) -> None:
    run = short_tmp / "run"
    run.mkdir(mode=0o777)
    os.chmod(run, 0o777)
    os.chown(run, NOBODY, NOBODY)
    with pytest.raises(ConflictError, match="owned by uid 65534"):
        bind_unix(run / "control.sock")
    assert list(run.iterdir()) == []  # nothing was bound inside it


@pytest.mark.parametrize("kind", ["directory", "file", "symlink"])
def test_bind_unix_never_removes_what_is_not_a_socket(short_tmp: Path, kind: str) -> None:
    path = short_tmp / "run" / "control.sock"
    path.parent.mkdir(mode=0o700)
    if kind == "directory":
        path.mkdir()
    elif kind == "file":
        path.write_text("keep me")
    else:
        path.symlink_to(short_tmp / "target")
    words = {"directory": "a directory", "file": "a regular file", "symlink": "a symbolic link"}
    with pytest.raises(StudioError) as err:
        bind_unix(path)
    assert err.value.message == (
        f"cannot create the control socket {path}: {words[kind]} is in the way"
    )
    assert os.path.lexists(path)


# --------------------------------------------------------------------------- 0700 folders


def test_ensure_dir_makes_every_missing_parent_private(tmp_path: Path) -> None:
    leaf = paths.ensure_dir(tmp_path / "a" / "b" / "c")
    for d in (tmp_path / "a", tmp_path / "a" / "b", leaf):
        assert mode_of(d) == 0o700, d
    with pytest.raises(FileExistsError):
        (tmp_path / "f").write_text("")
        paths.ensure_dir(tmp_path / "f")


def test_recipe_new_creates_config_and_recipes_0700(tmp_path: Path) -> None:
    from studioctl.cli.app import app

    home = Path(os.environ["STUDIOCTL_HOME"])
    assert not (home / "config").exists()
    r = CliRunner().invoke(app, ["recipe", "new", "tiny", "--backend", "vllm", "--model", "o/m"])
    assert r.exit_code == 0, r.output
    assert mode_of(home / "config") == 0o700
    assert mode_of(home / "config" / "recipes") == 0o700


@pytest.mark.parametrize("who", ["another user", "writable by others"])
def test_the_client_never_talks_to_a_socket_in_a_folder_it_cannot_trust(
    short_tmp: Path, who: str
) -> None:
    from studioctl.client import Client

    if who == "another user" and os.getuid() != 0:
        pytest.skip("chown to another uid needs root")
    d = short_tmp / "run"
    d.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(d / "control.sock"))  # someone's server, answering whatever comes
    listener.listen(1)
    listener.setblocking(False)
    try:
        if who == "another user":
            os.chown(d, NOBODY, NOBODY)
        else:
            os.chmod(d, 0o777)
        with Client(d / "control.sock", timeout=2) as client, pytest.raises(ConflictError) as err:
            client.status()
        assert str(d) in err.value.message
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    finally:
        listener.close()
