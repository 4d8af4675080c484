"""YAML files with line numbers and ``${VAR}`` interpolation: the one YAML reader.

Settings and recipes both need errors that name the file, the line and the key, so both
load through here. ``load_text`` composes the YAML node tree (PyYAML keeps a mark per
node), builds plain Python values, and records the line of every key path:
``doc.line("gateway", "port")`` → 12. Duplicate keys are errors (PyYAML would silently keep
the last one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from studioctl.errors import ValidationError

KeyPath = tuple[str | int, ...]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass
class YamlDoc:
    path: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line(self, *keypath: str | int) -> int | None:
        """Line (1-based) of the key path, or of its nearest parent that has one."""
        kp: KeyPath = tuple(keypath)
        while kp:
            if kp in self.lines:
                return self.lines[kp]
            kp = kp[:-1]
        return self.lines.get((), None)


def load_file(path: Path, *, error: type[ValidationError] = ValidationError) -> YamlDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error("file not found", file=str(path)) from exc
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", file=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise error("not UTF-8 text", file=str(path)) from exc
    return load_text(text, str(path), error=error)


def load_text(text: str, label: str, *, error: type[ValidationError] = ValidationError) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise error(f"invalid YAML: {exc.problem}", file=label, line=line) from exc
    except yaml.YAMLError as exc:
        raise error(f"invalid YAML: {exc}", file=label) from exc
    doc = YamlDoc(path=label, data=None)
    if node is None:
        doc.data = None
        return doc
    doc.lines[()] = node.start_mark.line + 1
    doc.data = _build(node, (), doc, error)
    return doc


def _build(node: yaml.Node, kp: KeyPath, doc: YamlDoc, error: type[ValidationError]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, doc, error)
            if not isinstance(key, str | int | float | bool) or isinstance(key, bool):
                raise error(
                    "mapping keys must be plain strings",
                    file=doc.path,
                    line=key_node.start_mark.line + 1,
                    key=_dotted(kp),
                )
            skey = str(key)
            if skey in out:
                raise error(
                    "duplicate key",
                    file=doc.path,
                    line=key_node.start_mark.line + 1,
                    key=_dotted((*kp, skey)),
                )
            doc.lines[(*kp, skey)] = key_node.start_mark.line + 1
            out[skey] = _build(value_node, (*kp, skey), doc, error)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            doc.lines[(*kp, i)] = item.start_mark.line + 1
            items.append(_build(item, (*kp, i), doc, error))
        return items
    return _scalar(node, doc, error)


def _scalar(node: yaml.Node, doc: YamlDoc, error: type[ValidationError]) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise error(
            "a mapping or list cannot be a key", file=doc.path, line=node.start_mark.line + 1
        )
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise error(
            f"invalid value: {exc.problem}", file=doc.path, line=node.start_mark.line + 1
        ) from exc
    finally:
        loader.dispose()


def _dotted(kp: KeyPath) -> str:
    return ".".join(str(k) for k in kp)


def dotted(kp: KeyPath) -> str:
    """``("gateway", "port")`` → ``"gateway.port"``; list indices as ``[i]``."""
    out = ""
    for k in kp:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


def interpolate(
    value: Any,
    *,
    env: Mapping[str, str] | None = None,
    where: str = "",
    file: str | None = None,
    line: int | None = None,
    error: type[ValidationError] = ValidationError,
) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in a string (``$$`` is a literal ``$``).

    An unset variable without a default is an error naming the key. Non-strings pass through.
    """
    if not isinstance(value, str) or "$" not in value:
        return value
    environ = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        got = environ.get(name)
        if got is None or (got == "" and default is not None):
            if default is None:
                raise error(
                    f"environment variable {name} is not set (write ${{{name}:-default}} "
                    "to give a default)",
                    file=file,
                    line=line,
                    key=where or None,
                )
            return default
        return got

    return _VAR.sub(sub, value)
