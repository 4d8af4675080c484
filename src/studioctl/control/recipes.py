"""Recipes as a launch or switch names them: by id, by absolute path (control socket only),
or as a file the client read and sent (control socket only)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from studioctl.errors import UsageError

if TYPE_CHECKING:
    from starlette.requests import Request

    from studioctl.api.models import SentFile
    from studioctl.recipes import Recipe

#: A recipe file a client sends is a few KiB; this bounds what the daemon will parse.
MAX_RECIPE_TEXT = 256 * 1024


def sent_recipe(file: SentFile, param: str) -> Recipe:
    """A recipe file that a client read and sent (``studioctl launch ./my.yaml``):
    ``{"path": its absolute path, "text": its text}``. Validated here exactly as that file
    would be in a recipe folder (the id from the file name, relative model/python paths
    from its folder, ``${VAR}`` from the daemon's environment, local paths must exist):
    the client's own check is a courtesy, not a guarantee."""
    from studioctl.recipes import SUFFIXES, parse_recipe_text

    path, text = file.path, file.text
    if len(path) > 4096 or not Path(path).is_absolute() or not path.endswith((*SUFFIXES, ".json")):
        raise UsageError(
            f"{param}.path must be an absolute path to a .yaml, .yml or .json file",
            details={"param": param},
        )
    if len(text) > MAX_RECIPE_TEXT:
        raise UsageError(
            f"{param}.text is over {MAX_RECIPE_TEXT} characters", details={"param": param}
        )
    return parse_recipe_text(text, path=Path(path), label=f"{path} (as sent)")


def on_control_socket(request: Request, what: str) -> None:
    """Recipe files and paths come only through the control socket, whose file mode limits it
    to the daemon's own user. Over TCP (the admin API, ``/admin/`` on the gateway port) the
    admin token must not become a way to run any command (a recipe's ``python:``) or read
    any file the daemon can: there, recipes are launched by id. uvicorn gives a Unix
    socket's requests no client address."""
    if request.client is not None:
        raise UsageError(
            f"{what} is accepted only on the daemon's control socket, not over TCP",
            hint="launch a recipe by id through the admin API; put the file in a recipe folder",
            details={"param": "recipe"},
        )


def recipe_id_of(target: str) -> str:
    """The recipe id a launch or switch by id-or-path will run. A relative path would be
    resolved against the daemon's working directory (``/`` under systemd), which is never
    what the caller meant: refused."""
    from studioctl.recipes import file_stem, is_path_like

    if not is_path_like(target):
        return target
    path = Path(target).expanduser()
    if not path.is_absolute():
        raise UsageError(
            f"recipe path {target[:200]!r} is relative, and the daemon does not share your "
            "working directory",
            hint="send the file (studioctl launch ./FILE does) or an absolute path",
            details={"param": "recipe"},
        )
    return file_stem(path)


async def named_recipe(
    request: Request, name: str | None, sent: SentFile | None, *, param: str, file_param: str
) -> tuple[str | Recipe, str]:
    """What a launch or switch names, and its recipe id: a recipe file the client sent
    (validated here), else an id or an absolute path (files and paths on the control socket
    only). ``param`` / ``file_param``: the request's field names, for the error."""
    if sent is not None:
        on_control_socket(request, "a recipe file")
        recipe = await asyncio.to_thread(sent_recipe, sent, file_param)
        return recipe, recipe.id
    if name is None:
        from studioctl.api.params import bad

        raise bad(param, "is required")
    recipe_id = recipe_id_of(name)
    if recipe_id != name:
        on_control_socket(request, "a recipe path")
    return name, recipe_id
