"""A relayed stream assembled into the answer the same request would have had unstreamed.

The mailbox keeps one shape per route whatever the client asked: chat completions become
one ``chat.completion`` (per choice: the role, the content and reasoning concatenated, the
tool calls merged by index with their arguments concatenated, the last finish reason),
completions one ``text_completion`` (the text concatenated), and a Responses stream its
terminal event's ``response`` object, which is the whole response already. The usage is
the engine's own (the gateway always asks for it), so the record counts every token.
"""

from __future__ import annotations

from typing import Any

from studioctl.gateway.sse import json_loads

__all__ = ["assemble_chat", "assemble_completion", "assemble_responses", "events"]


def events(data: bytes) -> list[tuple[str | None, Any]]:
    """Each event's name (``event:``) and parsed ``data:`` (``[DONE]`` and bad JSON left out)."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    out: list[tuple[str | None, Any]] = []
    for block in text.split(b"\n\n"):
        name: str | None = None
        lines: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
            elif line.startswith(b"data:"):
                lines.append(line[5:].strip())
        payload = b"\n".join(lines)
        if not payload or payload == b"[DONE]":
            continue
        try:
            out.append((name, json_loads(payload)))
        except ValueError:
            continue
    return out


def _head(chunks: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    first = chunks[0] if chunks else {}
    out = {
        "id": first.get("id"),
        "object": kind,
        "created": first.get("created"),
        "model": first.get("model"),
    }
    if first.get("system_fingerprint") is not None:
        out["system_fingerprint"] = first["system_fingerprint"]
    return out


def _chunks(data: bytes) -> list[dict[str, Any]]:
    return [obj for _, obj in events(data) if isinstance(obj, dict)]


def _merge_tool_calls(calls: dict[int, dict[str, Any]], deltas: Any) -> None:
    for delta in deltas if isinstance(deltas, list) else ():
        if not isinstance(delta, dict):
            continue
        index = delta.get("index", len(calls))
        call = calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        fn = delta.get("function")
        if isinstance(fn, dict):
            if fn.get("name"):
                call["function"]["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                call["function"]["arguments"] += fn["arguments"]


def assemble_chat(data: bytes, usage: dict[str, Any] | None) -> dict[str, Any]:
    """A chat completion stream's relayed bytes → a ``chat.completion``."""
    chunks = _chunks(data)
    parts: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            c = parts.setdefault(
                choice.get("index", 0),
                {"role": "assistant", "content": [], "reasoning": [], "tools": {}, "end": None},
            )
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                if delta.get("role"):
                    c["role"] = delta["role"]
                if isinstance(delta.get("content"), str):
                    c["content"].append(delta["content"])
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(reasoning, str):
                    c["reasoning"].append(reasoning)
                _merge_tool_calls(c["tools"], delta.get("tool_calls"))
            if choice.get("finish_reason") is not None:
                c["end"] = choice["finish_reason"]
    choices = []
    for index in sorted(parts):
        c = parts[index]
        message: dict[str, Any] = {
            "role": c["role"],
            "content": "".join(c["content"]) if c["content"] or not c["tools"] else None,
        }
        if c["reasoning"]:
            message["reasoning_content"] = "".join(c["reasoning"])
        if c["tools"]:
            message["tool_calls"] = [c["tools"][i] for i in sorted(c["tools"])]
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": c["end"]}
        )
    return {**_head(chunks, "chat.completion"), "choices": choices, "usage": usage}


def assemble_completion(data: bytes, usage: dict[str, Any] | None) -> dict[str, Any]:
    """A completions stream's relayed bytes → a ``text_completion``."""
    chunks = _chunks(data)
    texts: dict[int, list[str]] = {}
    ends: dict[int, Any] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            texts.setdefault(index, [])
            if isinstance(choice.get("text"), str):
                texts[index].append(choice["text"])
            if choice.get("finish_reason") is not None:
                ends[index] = choice["finish_reason"]
    choices = [
        {"index": i, "text": "".join(texts[i]), "logprobs": None, "finish_reason": ends.get(i)}
        for i in sorted(texts)
    ]
    return {**_head(chunks, "text_completion"), "choices": choices, "usage": usage}


def assemble_responses(data: bytes) -> dict[str, Any] | None:
    """A Responses stream's terminal event's ``response`` (None: the stream had none)."""
    found = None
    for _, obj in events(data):
        if isinstance(obj, dict) and isinstance(obj.get("response"), dict):
            kind = obj.get("type", "")
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                found = obj["response"]
    return found
