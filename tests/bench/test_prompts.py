"""Prompts: datasets (errors name the file and the line) and the synthetic search for an exact
token count, with counters that stand for other tokenizers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from studioctl.bench import prompts
from studioctl.errors import EXIT_ERROR, UsageError, ValidationError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def test_prompts_and_sharegpt(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"prompt": "hello there"}\n\n'
        '{"prompt": "short", "output_tokens": 7}\n'
        '{"conversations": [{"from": "system", "value": "be nice"},'
        ' {"from": "human", "value": "what is 2+2?"}, {"from": "gpt", "value": "4"}]}\n',
    )
    got = prompts.load_dataset(path, output_tokens=32)
    assert got == [
        prompts.Prompt("hello there", 32),
        prompts.Prompt("short", 7),
        prompts.Prompt("what is 2+2?", 32),
    ]
    assert prompts.load_dataset(path, 32, limit=2) == got[:2]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('{"prompt": "ok"}\n{"prompt": \n', 2, "not JSON"),
        ('{"prompt": "ok"}\n\n["a"]\n', 3, "expected an object"),
        ('{"prompt": ""}\n', 1, "prompt: must be a non-empty string"),
        ('{"prompt": "x", "output_tokens": 0}\n', 1, "output_tokens: must be a positive"),
        ('{"text": "x"}\n', 1, 'expected "prompt"'),
        ('{"conversations": [{"from": "gpt", "value": "x"}]}\n', 1, "no turn from 'human'"),
        ('{"conversations": ["x"]}\n', 1, r"conversations\[0\]"),
    ],
)
def test_dataset_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int, needle: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValidationError, match=needle) as info:
        prompts.load_dataset(path, 16)
    assert info.value.file == str(path) and info.value.line == line
    assert info.value.message.startswith(f"{path}:{line}")
    assert info.value.exit_code == EXIT_ERROR


def test_dataset_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        prompts.load_dataset(tmp_path / "nope.jsonl", 16)
    with pytest.raises(ValidationError, match="no prompt"):
        prompts.load_dataset(write(tmp_path, "\n\n"), 16)


def counter(overhead: int, double: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    async def count(text: str) -> int:
        calls.append(text)
        return overhead + sum(2 if w in double else 1 for w in text.split())

    return count, calls


def test_synthetic_exact_with_a_template_overhead() -> None:
    count, calls = counter(overhead=9)
    got = asyncio.run(prompts.synthetic(count, 100, 16, variants=5, seed=1))
    assert len(got) == 5 and all(p.output_tokens == 16 for p in got)
    assert [asyncio.run(count(p.text)) for p in got] == [100] * 5
    assert len({p.text for p in got}) == 5  # distinct prompts
    assert len({p.text.split()[0] for p in got}) == 1  # one first word
    assert len(calls) <= 3 + 5


def test_synthetic_converges_with_words_of_two_tokens() -> None:
    count, _ = counter(overhead=1, double=frozenset(["water", "people", "little", "called"]))
    got = asyncio.run(prompts.synthetic(count, 300, 4, variants=3, seed=5))
    assert [asyncio.run(count(p.text)) for p in got] == [300, 300, 300]
    # Same seed, same prompts.
    again = asyncio.run(prompts.synthetic(count, 300, 4, variants=3, seed=5))
    assert again == got


def test_synthetic_below_the_template_is_a_usage_error() -> None:
    count, _ = counter(overhead=12)
    with pytest.raises(UsageError, match="--prompt-tokens 10") as info:
        asyncio.run(prompts.synthetic(count, 10, 4, variants=1, seed=0))
    assert "chat template" in (info.value.hint or "")


def test_synthetic_with_words_of_several_tokens_each() -> None:
    """A small vocabulary (the e2e tier's tiny model: 487 tokens) splits most words into
    2 to 7 tokens: the search still lands on the exact count, finishing with a word of the
    right length when the next word would jump over it."""
    sizes = {w: 1 + len(w) // 3 for w in prompts.WORDS}  # 1 to 3 tokens a word

    async def count(text: str) -> int:
        return 1 + sum(sizes[w] for w in text.split())

    for target in (64, 65, 66, 67, 300):
        got = asyncio.run(prompts.synthetic(count, target, 4, variants=3, seed=2))
        assert [asyncio.run(count(p.text)) for p in got] == [target] * 3
