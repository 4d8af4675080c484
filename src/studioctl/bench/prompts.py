"""What the load generator sends: synthetic prompts of an exact token length, or a dataset.

Synthetic prompts are words drawn (seeded) from a list of common short English words, which
most tokenizers take as one token each after a space. Their length is set by the target's
own count: ``POST /tokenize`` (vLLM and SGLang serve it) of exactly the messages or prompt
that will be sent, so ``--prompt-tokens P`` is what the engine reports as the request's
``usage.prompt_tokens`` (a chat prompt's template included). A target without ``/tokenize``
(the gateway) is asked through a one-token request, whose ``usage.prompt_tokens`` is the
count. The base prompt is searched once; each request gets the same words after the first in
its own seeded order, so no two requests share more than a first word (no prefix-cache
hits) and, since words after a space are counted one by one, each has the same count.

A dataset is JSON Lines: ``{"prompt": "..."}`` (optionally ``"output_tokens": N``) or
ShareGPT-style ``{"conversations": [{"from": "human", "value": "..."}, ...]}`` (the first
human turn is the prompt). Errors name the file and the line.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studioctl.errors import UsageError, ValidationError

_WORD_TEXT = """the of and to in is was for on are with as at be this have from or had by not but
    what all were when we there can an your which their said if do will each about how up
    out them then she many some so these would other into has more her two like him see time
    could no make than first been its who now people my made over did down only way find use
    may water long little very after words called just where most know"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
#: At most this many distinct prompts are built; longer runs cycle through them.
MAX_VARIANTS = 1024
# A dataset line above this is refused (bounded: the file is the user's, but lines are kept).
_MAX_LINE = 1 << 20
_SEARCH_STEPS = 16


@dataclass(frozen=True)
class Prompt:
    """One request's input: chat messages or a completion prompt, and its output length."""

    text: str
    output_tokens: int

    def body(self, chat: bool) -> dict[str, Any]:
        if chat:
            return {"messages": [{"role": "user", "content": self.text}]}
        return {"prompt": self.text}


#: Counts the tokens the target sees for one prompt text (as the request will carry it).
Counter = Callable[[str], Awaitable[int]]


async def synthetic(
    count: Counter, prompt_tokens: int, output_tokens: int, variants: int, seed: int
) -> list[Prompt]:
    """``variants`` prompts of exactly ``prompt_tokens`` tokens by ``count`` (UsageError when
    no word count gives exactly that: the chat template alone may be longer)."""
    rng = random.Random(seed)
    pool = [rng.choice(WORDS) for _ in range(prompt_tokens + 8)]
    words = await _exact(count, pool, prompt_tokens, rng)
    out = [Prompt(" ".join(words), output_tokens)]
    for i in range(1, max(1, variants)):
        tail = words[1:]
        random.Random(f"{seed}:{i}").shuffle(tail)
        out.append(Prompt(" ".join([words[0], *tail]), output_tokens))
    return out


async def _exact(count: Counter, pool: list[str], target: int, rng: random.Random) -> list[str]:
    """Words of ``pool`` (from its start) that ``count`` makes exactly ``target`` tokens.

    The word count is stepped in proportion to the last count, which converges in a few
    steps whatever the tokens per word (a small vocabulary splits a word into several); near
    the target, one word at a time. A word of several tokens can jump over the target: then
    the longest prefix below it is finished with one word of the right length (or its
    last word is swapped for one)."""

    async def counted(n: int) -> int:
        if n > len(pool):
            pool.extend(rng.choice(WORDS) for _ in range(n - len(pool)))
        if n not in seen:
            seen[n] = await count(" ".join(pool[:n]))
        return seen[n]

    seen: dict[int, int] = {}
    n = target
    for _ in range(_SEARCH_STEPS):
        got = await counted(n)
        if got == target:
            return pool[:n]
        nxt = max(1, round(n * target / got)) if got > 0 else n * 2
        if nxt in seen:
            nxt = n + (1 if got < target else -1)
        if nxt < 1 or nxt in seen:
            break
        n = nxt
    below = [k for k, v in seen.items() if v < target]
    if below:
        n = max(below)
        while n + 1 not in seen and len(seen) < 2 * _SEARCH_STEPS:
            if await counted(n + 1) == target:
                return pool[: n + 1]
            if seen[n + 1] > target:
                break
            n += 1
        # One word more, or the last word swapped for a longer one.
        for keep in (n, n - 1) if n > 1 else (n,):
            for word in sorted(set(WORDS), key=lambda w: (len(w), w)):
                words = [*pool[:keep], word]
                if await count(" ".join(words)) == target:
                    return words
    near = ", ".join(f"{k} words → {v}" for k, v in sorted(seen.items())[:6])
    raise UsageError(
        f"--prompt-tokens {target}: no prompt of that exact length found "
        f"(the target counted {near})",
        hint="a chat template has tokens of its own: give a larger --prompt-tokens",
    )


def load_dataset(path: Path, output_tokens: int, limit: int = MAX_VARIANTS) -> list[Prompt]:
    """Up to ``limit`` prompts from a JSON Lines file (ValidationError naming file and line)."""
    import orjson

    name = str(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise UsageError(f"--dataset {name}: cannot read it: {exc.strerror or exc}") from None
    out: list[Prompt] = []
    with f:
        for number, raw in enumerate(f, start=1):
            if len(out) >= limit:
                break
            if len(raw) > _MAX_LINE:
                raise ValidationError(f"line above {_MAX_LINE} bytes", file=name, line=number)
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ValidationError(f"not JSON: {exc}", file=name, line=number) from None
            out.append(_prompt(item, output_tokens, name, number))
    if not out:
        raise ValidationError("no prompt in the file", file=name)
    return out


def _prompt(item: object, output_tokens: int, name: str, number: int) -> Prompt:
    def bad(message: str, key: str | None = None) -> ValidationError:
        return ValidationError(message, file=name, line=number, key=key)

    if not isinstance(item, dict):
        raise bad('expected an object: {"prompt": ...} or {"conversations": [...]}')
    out = item.get("output_tokens", output_tokens)
    if not isinstance(out, int) or isinstance(out, bool) or out < 1:
        raise bad("must be a positive integer", "output_tokens")
    if "prompt" in item:
        text = item["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise bad("must be a non-empty string", "prompt")
        return Prompt(text, out)
    turns = item.get("conversations")
    if not isinstance(turns, list):
        raise bad('expected "prompt" (a string) or "conversations" (a list of turns)')
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise bad("must be an object with 'from' and 'value'", f"conversations[{index}]")
        if turn.get("from") in ("human", "user"):
            value = turn.get("value")
            if not isinstance(value, str) or not value.strip():
                raise bad("must be a non-empty string", f"conversations[{index}].value")
            return Prompt(value, out)
    raise bad("no turn from 'human'", "conversations")
