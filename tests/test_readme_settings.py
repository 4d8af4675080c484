"""The README's settings examples are real: every ``yaml`` block under "## Settings",
"## Requests drive the engines" and "## Results that outlive their clients" loads as a
settings file, and each plain value it shows is the default (a block that shows a stale
default, or a key that no longer exists, fails)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from studioctl.settings.load import validate_settings_file

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Settings", "## Requests drive the engines", "## Results that outlive their clients")
# Values the README shows as an example, not as the default.
EXAMPLES = {"scheduler.groups", "daemon.admin_token"}


def section(title: str) -> str:
    text = README.read_text()
    start = text.index("\n" + title + "\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def yaml_blocks(title: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", section(title), flags=re.S)


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in EXAMPLES:
            out.update(leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def current(settings: Any, dotted: str) -> Any:
    section_name, key = dotted.split(".", 1)
    value = getattr(getattr(settings, section_name), key)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("title", SECTIONS)
def test_the_readme_settings_blocks_load_and_show_the_defaults(
    title: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = yaml_blocks(title)
    assert blocks, f"no yaml block under {title}"
    monkeypatch.delenv("STUDIOCTL_ADMIN_TOKEN", raising=False)
    (tmp_path / "empty.yaml").write_text("{}\n")
    defaults = validate_settings_file(tmp_path / "empty.yaml")
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block)
        validate_settings_file(path)  # unknown keys and bad values fail here, with the line
        for dotted, shown in leaves(yaml.safe_load(block)).items():
            if dotted in EXAMPLES:
                continue
            assert current(defaults, dotted) == shown, f"README {title}: {dotted}"


def test_the_scale_out_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "More than one gateway"'s studioctl.yaml is a valid settings file that sets both
    shared backends."""
    (block,) = [b for b in yaml_blocks("## More than one gateway") if b.startswith("# studioctl")]
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    monkeypatch.setenv("STUDIOCTL_ADMIN_TOKEN", "t0ken")
    path = tmp_path / "studioctl.yaml"
    path.write_text(block)
    settings = validate_settings_file(path)
    assert settings.store.backend == "postgres" and "s3cret@db.internal" in str(settings.store.url)
    assert settings.limits.backend == "redis" and settings.limits.redis_url
