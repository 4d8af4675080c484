"""The bodies of a request whose recipe or tenant turned on ``log_bodies`` (debugging).

Nothing here runs for other requests: admission attaches a :class:`BodyCapture` to the
request's context only when the flag is on. It keeps the payload sent to the engine, the
engine's answer (a non-streamed one as it is; a stream's relayed bytes, up to
``MAX_STREAM_BYTES``, from which :meth:`BodyCapture.texts` assembles the generated text),
and hands both to the usage row. The store caps each at ``usage.body_max_bytes``.
"""

from __future__ import annotations

from studioctl.gateway.sse import json_loads

__all__ = ["MAX_STREAM_BYTES", "BodyCapture", "stream_text"]

#: The most bytes of one stream kept to assemble its text (the store's cap is smaller).
MAX_STREAM_BYTES = 4 * 1024 * 1024
_CUT = "…[stream cut at the gateway's capture limit]"
_TEXT_KEYS = ("reasoning_content", "content", "text")


class BodyCapture:
    """What one request sent and got back (see the module docstring)."""

    __slots__ = ("cut", "parts", "request", "size")

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parts: list[bytes] = []
        self.size = 0
        self.cut = False

    def add(self, data: bytes) -> None:
        """The answer's bytes as they are relayed (bounded by ``MAX_STREAM_BYTES``)."""
        if self.size + len(data) > MAX_STREAM_BYTES:
            self.cut = True
            return
        self.parts.append(data)
        self.size += len(data)

    def texts(self, stream: bool) -> tuple[str, str | None]:
        """(request body, response: the JSON answer, or a stream's assembled text)."""
        request = self.request.decode("utf-8", "replace")
        if not self.parts:
            return request, None
        raw = b"".join(self.parts)
        response = stream_text(raw) if stream else raw.decode("utf-8", "replace")
        return request, response + _CUT if self.cut else response


def stream_text(raw: bytes) -> str:
    """The text a stream of ``chat.completion.chunk`` / ``text_completion`` events carries
    (choice 0's content, reasoning or text, in order); an error event as it was sent."""
    out: list[str] = []
    for line in raw.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]" or not data:
            continue
        try:
            event = json_loads(data)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if "error" in event:
            out.append(f"\n[error] {data.decode('utf-8', 'replace')}")
            continue
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            source = delta if isinstance(delta, dict) else choice
            for key in _TEXT_KEYS:
                value = source.get(key)
                if isinstance(value, str):
                    out.append(value)
    return "".join(out)
