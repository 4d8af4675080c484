"""``studioctl recipe``: list, show, create, edit, validate, remove, import and export recipes.

Needs no daemon: every command calls ``studioctl.recipes`` directly (imported inside the
command so that ``studioctl --help`` does not pay for pydantic and YAML).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from studioctl.cli.app import app
from studioctl.errors import ConflictError, RecipeError, StudioError, UsageError

if TYPE_CHECKING:
    from studioctl.recipes import Recipe

recipe_app = typer.Typer(
    name="recipe",
    help="Write, check and share recipes (engine launch configurations).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(recipe_app, name="recipe")

_JSON = typer.Option(False, "--json", help="Print JSON.")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _warn(exc: StudioError) -> None:
    sys.stderr.write(f"error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")


def _error_dict(exc: StudioError) -> dict[str, Any]:
    return {
        "message": exc.message,
        "code": exc.code,
        "file": getattr(exc, "file", None),
        "line": getattr(exc, "line", None),
        "key": getattr(exc, "key", None),
        "hint": exc.hint,
    }


@recipe_app.command("list")
def list_cmd(as_json: bool = _JSON) -> None:
    """List the recipes in every recipe folder.

    Folders: <config dir>/recipes, the settings' recipes.dirs ($STUDIOCTL_RECIPES_DIRS).
    Files that do not validate are reported on stderr (exit 1); the others are listed.

    Example: studioctl recipe list --json | jq -r '.[].id'
    """
    from studioctl.recipes import scan_recipes

    scan = scan_recipes()
    if as_json:
        _echo_json([r.to_dict() for r in scan.recipes])
    elif scan.recipes:
        rows = [
            [
                r.id,
                r.backend,
                ",".join(r.model_names),
                r.model,
                ",".join(str(g) for g in r.gpus) or "-",
                str(r.port) if r.port else "auto",
            ]
            for r in scan.recipes
        ]
        _table(["ID", "BACKEND", "SERVED AS", "MODEL", "GPUS", "PORT"], rows)
    elif not scan.errors:
        from studioctl.recipes import recipe_dirs

        typer.echo("no recipes; create one with: studioctl recipe new ID --backend vllm --model M")
        typer.echo("recipe folders: " + ", ".join(str(d) for d in recipe_dirs()))
    for err in scan.errors:
        _warn(err)
    if scan.errors:
        raise typer.Exit(1)


@recipe_app.command("show")
def show(
    recipe_id: str = typer.Argument(..., metavar="ID", help="Recipe id or file."),
    as_json: bool = _JSON,
) -> None:
    """Show one recipe: every value, defaults included, and the file it lives in.

    Example: studioctl recipe show llama-3.1-8b-vllm
    """
    from studioctl.recipes import get_recipe

    recipe = get_recipe(recipe_id, check_paths=False)
    data = recipe.to_dict()
    data["model_names"] = recipe.model_names
    data["python_executable"] = recipe.python_executable()
    data["content_hash"] = recipe.content_hash()
    if as_json:
        _echo_json(data)
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if value is None or value == [] or value == {}:
            continue
        shown = value if isinstance(value, str) else json.dumps(value)
        typer.echo(f"{key:<{width}}  {shown}")
    typer.echo(f"# the exact command: studioctl launch {recipe.id} --dry-run")


def _parse_gpus(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--gpus: expected GPU indices like 0,1, got {text!r}") from None


def _local(value: str | None) -> str | None:
    """A path given on the command line: relative to where the command runs."""
    if value and value.startswith(("./", "../")):
        return str(Path(value).absolute())
    return value


_OPTION_OF = {"tensor_parallel_size": "--tp", "max_model_len": "--max-model-len"}


def _check_free(recipe_id: str, dest: Path, force: bool) -> None:
    """Refuse to clobber a recipe, or to make a second recipe with the same id."""
    from studioctl.recipes import SUFFIXES, recipe_dirs

    for d in recipe_dirs():
        for suffix in SUFFIXES:
            other = d / f"{recipe_id}{suffix}"
            if other.is_file() and other.absolute() != dest.absolute():
                raise ConflictError(
                    f"recipe {recipe_id!r} already exists: {other}",
                    hint="recipe ids are unique across the recipe folders; pick another id",
                )
    if dest.exists() and not force:
        raise ConflictError(f"{dest} already exists", hint="pass --force to overwrite it")


@recipe_app.command("new")
def new(
    recipe_id: str = typer.Argument(..., metavar="ID", help="The new recipe's id."),
    backend: str = typer.Option(..., "--backend", "-b", help="vllm or sglang."),
    model: str = typer.Option(..., "--model", "-m", help="Hugging Face id or local path."),
    gpus: str | None = typer.Option(None, "--gpus", help="GPU indices, e.g. 0,1."),
    port: int | None = typer.Option(None, "--port", help="Fixed engine port."),
    python: str | None = typer.Option(None, "--python", help="Interpreter or venv."),
    tp: int | None = typer.Option(None, "--tp", help="tensor_parallel_size."),
    max_model_len: int | None = typer.Option(None, "--max-model-len", help="Context length."),
    directory: Path | None = typer.Option(
        None, "--dir", help="Folder to write to (default: <config dir>/recipes)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a new recipe: the given values plus every other key, commented out.

    Example: studioctl recipe new qwen-7b --backend vllm --model Qwen/Qwen2.5-7B-Instruct
    --gpus 0 --max-model-len 8192
    """
    import pydantic

    from studioctl import paths
    from studioctl.recipes import (
        Recipe,
        atomic_write,
        looks_local,
        parse_recipe_text,
        template_text,
    )

    values: dict[str, Any] = {"id": recipe_id, "backend": backend, "model": _local(model)}
    optional = {
        "gpus": _parse_gpus(gpus) or None,
        "port": port,
        "python": _local(python),
        "tensor_parallel_size": tp,
        "max_model_len": max_model_len,
    }
    values.update({k: v for k, v in optional.items() if v is not None})
    for key in ("model", "python"):
        if isinstance(values.get(key), str) and values[key].startswith("~"):
            values[key] = os.path.expanduser(values[key])
    try:
        recipe = Recipe.model_validate(values)
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0]) if err["loc"] else "id"
        option = _OPTION_OF.get(key, "--" + key.replace("_", "-") if key != "id" else "ID")
        ctx = err.get("ctx") or {}
        reason = ctx.get("message") if err["type"] == "recipe" else err["msg"]
        raise UsageError(f"{option}: {reason}") from None
    if looks_local(recipe.model) and not os.path.exists(recipe.model):
        raise UsageError(f"--model: path does not exist: {recipe.model}")
    dest = (directory or paths.user_recipes_dir()) / f"{recipe_id}.yaml"
    _check_free(recipe_id, dest, force)
    text = template_text(recipe)
    try:
        parse_recipe_text(text, path=dest, check_paths=True)  # what we write must load
    except RecipeError as exc:  # e.g. --python that does not exist
        option = _OPTION_OF.get(exc.key or "", "--" + (exc.key or "").replace("_", "-"))
        raise UsageError(f"{option}: {exc.reason}", hint=exc.hint) from None
    atomic_write(dest, text)
    typer.echo(str(dest))


@recipe_app.command("edit")
def edit(recipe_id: str = typer.Argument(..., metavar="ID", help="Recipe id.")) -> None:
    """Edit a recipe in $VISUAL / $EDITOR; it is validated again when the editor exits.

    A copy is edited. A valid result replaces the recipe; an invalid one is kept aside in
    <file>.rejected (the recipe stays untouched) and the error says where and why.
    """
    import shlex
    import shutil
    import subprocess
    import tempfile

    from studioctl.recipes import atomic_write, find_recipe_file, parse_recipe_text

    path = find_recipe_file(recipe_id)
    original = path.read_text(encoding="utf-8")
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    tmpdir = Path(tempfile.mkdtemp(prefix="studioctl-edit-"))
    try:
        tmp = tmpdir / path.name
        tmp.write_text(original, encoding="utf-8")
        try:
            code = subprocess.call([*shlex.split(editor), str(tmp)])
        except FileNotFoundError:
            raise UsageError(f"editor not found: {editor}", hint="set $VISUAL or $EDITOR") from None
        if code != 0:
            raise StudioError(f"the editor exited with {code}; {path} is unchanged")
        edited = tmp.read_text(encoding="utf-8")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if edited == original:
        typer.echo(f"no changes: {path}")
        return
    rejected = path.with_name(path.name + ".rejected")
    try:
        parse_recipe_text(edited, path=path, check_paths=True, label=str(rejected))
    except RecipeError as exc:
        atomic_write(rejected, edited)
        raise RecipeError(
            exc.reason,
            file=str(rejected),
            line=exc.line,
            key=exc.key,
            hint=f"{path} is unchanged; your edit is kept in {rejected}",
        ) from None
    atomic_write(path, edited)
    typer.echo(f"saved {path}")


@recipe_app.command("validate")
def validate(
    targets: list[str] = typer.Argument(None, metavar="[ID|FILE]...", help="Default: all."),
    engine: bool = typer.Option(
        False, "--engine", help="Also check the flags with the engine's own parser."
    ),
    as_json: bool = _JSON,
) -> None:
    """Check recipes: schema, values, paths, duplicate ids; with --engine also the flags,
    parsed by the engine installed in the recipe's python (takes ~10-20 s per recipe).

    Exit 0 when every recipe is valid, else the first failure's exit code.

    Example: studioctl recipe validate --engine tiny-cpu
    """
    from studioctl.errors import NotFoundError, OperationTimeout
    from studioctl.recipes import get_recipe, scan_recipes

    results: list[dict[str, Any]] = []
    failures: list[StudioError] = []
    loaded: list[tuple[dict[str, Any], Recipe]] = []
    if targets:
        for target in targets:
            entry: dict[str, Any] = {"target": target, "id": None, "file": None, "ok": False}
            try:
                recipe = get_recipe(target, check_paths=True)
            except (RecipeError, NotFoundError) as exc:
                entry["file"] = getattr(exc, "file", None)
                entry["error"] = _error_dict(exc)
                failures.append(exc)
            else:
                loaded.append((entry, recipe))
            results.append(entry)
    else:
        scan = scan_recipes(check_paths=True)
        for recipe in scan.recipes:
            entry = {"target": recipe.id, "id": None, "file": None, "ok": False}
            loaded.append((entry, recipe))
            results.append(entry)
        for bad in scan.errors:
            failures.append(bad)
            results.append(
                {
                    "target": bad.file,
                    "id": None,
                    "file": bad.file,
                    "ok": False,
                    "error": _error_dict(bad),
                }
            )
    for entry, recipe in loaded:
        entry.update(id=recipe.id, file=str(recipe.source) if recipe.source else None, ok=True)
        entry["error"] = None
        if engine:
            from studioctl.engines import check_flags

            try:
                check = check_flags(recipe)
            except (RecipeError, OperationTimeout) as exc:
                entry["ok"] = False
                entry["error"] = _error_dict(exc)
                failures.append(exc)
            else:
                entry["engine"] = check.to_dict()
    if as_json:
        _echo_json({"ok": not failures, "results": results})
    else:
        _print_validation(results)
    if failures:
        raise typer.Exit(failures[0].exit_code)


def _print_validation(results: list[dict[str, Any]]) -> None:
    for entry in results:
        if entry["ok"]:
            extra = ""
            if "engine" in entry:
                eng = entry["engine"]
                version = eng["engine_version"] or "?"
                depth = "parser + config" if eng["deep"] else "parser"
                extra = f"  [{eng['backend']} {version}: {depth}]"
            typer.echo(f"ok     {entry['id']}  {entry['file']}{extra}")
            for note in entry.get("engine", {}).get("notes", []):
                typer.echo(f"       note: {note}")
        else:
            err = entry["error"]
            typer.echo(f"error  {err['message']}")
            if err.get("hint"):
                typer.echo(f"       hint: {err['hint']}")


@recipe_app.command("rm")
def rm(
    recipe_id: str = typer.Argument(..., metavar="ID", help="Recipe id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete a recipe's file (even one that does not validate)."""
    from studioctl.recipes import find_recipe_file, remove_recipe

    path = find_recipe_file(recipe_id)
    if not yes and not typer.confirm(f"remove {path}?", default=False):
        raise StudioError("not removed")
    remove_recipe(recipe_id)
    typer.echo(f"removed {path}")


@recipe_app.command("import")
def import_cmd(
    files: list[Path] = typer.Argument(..., metavar="FILE...", help="YAML or JSON files."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing recipes."),
    directory: Path | None = typer.Option(
        None, "--dir", help="Folder to write to (default: <config dir>/recipes)."
    ),
) -> None:
    """Import recipes: studioctl YAML/JSON, or vLLM Studio's JSON recipes.

    vLLM Studio keys are mapped (model_path -> model, tp -> tensor_parallel_size, its
    extra_args -> engine_args, ...); keys with no meaning here are refused by name. All files
    are read and checked before anything is written.

    Example: studioctl recipe import ~/vllm-studio/recipes/*.json
    """
    from studioctl import paths
    from studioctl.recipes import atomic_write, read_import

    dest_dir = directory or paths.user_recipes_dir()
    todo = []
    for file in files:
        for item in read_import(file):
            dest = dest_dir / f"{item.recipe.id}.yaml"
            _check_free(item.recipe.id, dest, force)
            todo.append((file, item, dest))
    ids = [item.recipe.id for _, item, _ in todo]
    for recipe_id in ids:
        if ids.count(recipe_id) > 1:
            raise ConflictError(f"recipe id {recipe_id!r} comes from more than one file")
    for file, item, dest in todo:
        atomic_write(dest, item.text)
        typer.echo(f"{item.recipe.id}: {file} -> {dest}")
        for note in item.notes:
            sys.stderr.write(f"  note: {note}\n")


@recipe_app.command("export")
def export(
    recipe_id: str = typer.Argument(..., metavar="ID", help="Recipe id."),
    as_json: bool = typer.Option(False, "--json", help="The resolved values as JSON."),
) -> None:
    """Print a recipe: its YAML file as written (comments and ${VAR} kept), or with
    --json the resolved values.

    Example: studioctl recipe export tiny-cpu > tiny-cpu.yaml
    """
    from studioctl.recipes import find_recipe_file, get_recipe

    if as_json:
        data = get_recipe(recipe_id, check_paths=False).to_dict()
        data.pop("source", None)
        data.pop("served_name", None)
        _echo_json(data)
        return
    path = find_recipe_file(recipe_id)
    get_recipe(str(path), check_paths=False)  # only valid recipes are exported
    typer.echo(path.read_text(encoding="utf-8"), nl=False)
