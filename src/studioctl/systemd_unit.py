"""The systemd unit for ``studioctl daemon run``, rendered with this install's paths.

``contrib/systemd/studioctl.service`` is ``render()`` with the defaults (a test keeps the two
equal); ``studioctl daemon install-unit`` writes ``render()`` with the running studioctl and
STUDIOCTL_HOME. Choices that matter for engines:

- ``Type=notify``: the daemon sends READY=1 once its sockets answer, STOPPING=1 on stop.
- ``KillMode=process``: a stop or restart of the daemon leaves the engines running; the next
  daemon adopts them (``daemon stop --stop-engines`` stops them on purpose).
- Hardening that leaves engines working: no ``PrivateDevices`` (they need /dev/nvidia*), no
  ``MemoryDenyWriteExecute`` (PyTorch and Triton JIT-compile), ``ProtectSystem=full`` rather
  than ``strict`` (engines write their model caches, e.g. ~/.cache/huggingface).
- A system unit keeps everything under one ``STUDIOCTL_HOME`` (the state directory
  /var/lib/studioctl unless STUDIOCTL_HOME is set), so the CLI finds the daemon's socket by
  setting the same variable; a user unit uses the user's own directories, as the CLI does.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXEC = "/usr/local/bin/studioctl"
DEFAULT_HOME = "/var/lib/studioctl"
UNIT_NAME = "studioctl.service"


@dataclass(frozen=True)
class UnitPaths:
    exec_start: str  # the command that runs studioctl (a script, or python -m studioctl)
    home: str | None  # STUDIOCTL_HOME, or None for the user's platform directories


def this_install(*, user: bool) -> UnitPaths:
    """The running studioctl and its STUDIOCTL_HOME (a system unit gets one by default)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "studioctl" and argv0.is_file():
        exec_start = str(argv0.resolve())
    else:  # `python -m studioctl`: the interpreter that has this studioctl
        exec_start = f"{sys.executable} -m studioctl"
    home = os.environ.get("STUDIOCTL_HOME")
    if home:
        home = str(Path(home).expanduser().absolute())
    elif not user:
        home = DEFAULT_HOME
    return UnitPaths(exec_start=exec_start, home=home)


def unit_path(*, user: bool) -> Path:
    if not user:
        return Path("/etc/systemd/system") / UNIT_NAME
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


def next_commands(*, user: bool) -> list[str]:
    ctl = "systemctl --user" if user else "systemctl"
    return [f"{ctl} daemon-reload", f"{ctl} enable --now studioctl"]


def render(paths: UnitPaths | None = None, *, user: bool = False) -> str:
    p = paths or UnitPaths(exec_start=DEFAULT_EXEC, home=DEFAULT_HOME)
    lines = [
        "# studioctl daemon: engine lifecycle, the control API and the OpenAI-compatible gateway.",
        "# Shipped as contrib/systemd/studioctl.service; `studioctl daemon install-unit"
        + (" --user" if user else "")
        + "`",
        "# writes it with the paths of the install that runs it.",
        "[Unit]",
        "Description=studioctl daemon (LLM engines and gateway)",
    ]
    if not user:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={p.exec_start} daemon run",
        "# Engines outlive a daemon stop or restart; the next daemon adopts them.",
        "KillMode=process",
        "Restart=on-failure",
        "RestartSec=2",
        "TimeoutStopSec=90",
        "LimitNOFILE=65536",
        "Environment=STUDIOCTL_DAEMON_AUTOSTART=false",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if p.home:
        lines.append(f"Environment=STUDIOCTL_HOME={p.home}")
    if not user:
        state = _state_directory(p.home)
        if state:
            lines += [f"StateDirectory={state}", "StateDirectoryMode=0700"]
        lines += [
            "UMask=0077",
            "# Hardening that leaves engines working: they need the GPU devices (no",
            "# PrivateDevices), JIT-compile (no MemoryDenyWriteExecute) and write model caches",
            "# under their home (ProtectSystem=full, not strict).",
            "NoNewPrivileges=yes",
            "ProtectSystem=full",
        ]
        if p.home and not _state_directory(p.home):
            lines.append(f"ReadWritePaths={p.home}")
        if not (p.home or "").startswith("/tmp/"):
            lines.append("PrivateTmp=yes")
        lines += [
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes",
            "LockPersonality=yes",
        ]
    else:
        lines += ["UMask=0077", "NoNewPrivileges=yes"]
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}"]
    return "\n".join(lines) + "\n"


def _state_directory(home: str | None) -> str | None:
    """``StateDirectory=`` takes a name under /var/lib: used when the home is there."""
    if home and home.startswith("/var/lib/") and len(home) > len("/var/lib/"):
        return home[len("/var/lib/") :]
    return None
