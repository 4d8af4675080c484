"""A ``multipart/form-data`` upload (audio transcriptions, translations) streamed through.

The gateway needs one thing from the form: its ``model`` field, to pick the engine. So the
body is read incrementally: :meth:`FormUpload.find_model` reads until the ``model`` part is
complete, keeping those bytes (the prefix); :meth:`FormUpload.chunks` then gives the prefix
and every later chunk as it arrives, for the engine, never holding more than one chunk (the
server stops reading the client while the engine does not take the bytes).

The rule for the order of the parts: the ``model`` field must end within the first
``MAX_PREFIX_BYTES`` of the body. Clients send their form fields before the file (the
``openai`` client through httpx writes every data field, then the files), so the prefix is
a few hundred bytes; a form with a large file before its ``model`` is refused with 400
``invalid_request`` (buffering that file is what streaming avoids). A form without a
``model`` field is refused the same way.

``gateway.max_body_bytes`` bounds the whole body as it streams: a declared Content-Length
above it is refused at once, and the upload is ended with 413 ``body_too_large`` the moment
the bytes received pass it (the engine's connection is closed then). A model name that is
an alias the engine does not know is rewritten in the prefix (the length adjusted).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from studioctl.errors import GatewayError
from studioctl.gateway.asgi import Receive
from studioctl.gateway.body import MAX_MODEL_CHARS

__all__ = ["MAX_PREFIX_BYTES", "ClientGone", "FormUpload", "boundary_of", "too_large"]

# The model field must end within this many bytes of the body (see the module docstring).
MAX_PREFIX_BYTES = 1 << 20
# RFC 2046: a boundary has 1 to 70 characters.
_MAX_BOUNDARY = 70


class ClientGone(Exception):
    """The client disconnected while its upload was being read."""


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or 400."""
    if content_type is not None:
        kind, _, params = content_type.partition(b";")
        if kind.strip().lower() == b"multipart/form-data":
            for param in params.split(b";"):
                name, _, value = param.strip().partition(b"=")
                if name.strip().lower() == b"boundary":
                    value = value.strip().strip(b'"')
                    if 0 < len(value) <= _MAX_BOUNDARY:
                        return value
    raise GatewayError(
        400,
        "invalid_request",
        "this route takes a multipart/form-data body (with its boundary)",
    )


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, "body_too_large", f"the request body exceeds gateway.max_body_bytes ({limit} bytes)"
    )


def _field_name(headers: bytes) -> bytes | None:
    """The ``name`` of a part's Content-Disposition header."""
    for line in headers.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() != b"content-disposition":
            continue
        for param in value.split(b";")[1:]:
            pname, _, pvalue = param.strip().partition(b"=")
            if pname.strip().lower() == b"name":
                return pvalue.strip().strip(b'"')
    return None


class FormUpload:
    """One multipart request body, read from ``receive`` (see the module docstring)."""

    def __init__(self, receive: Receive, boundary: bytes, limit: int) -> None:
        self._receive = receive
        self._delim = b"--" + boundary
        self._limit = limit
        self._buf = b""  # the prefix read so far
        self._pos = -1  # where the next part's headers start in _buf (-1: before the first)
        self._span: tuple[int, int] | None = None  # the model value's bytes in _buf
        self._more = True  # the client has more body to send
        self.size = 0  # body bytes received so far

    async def _next(self) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        self._more = bool(message.get("more_body", False))
        self.size += len(chunk)
        if self.size > self._limit:
            raise too_large(self._limit)
        return chunk

    async def find_model(self) -> str:
        """Read until the ``model`` field is complete: its value, or 400."""
        while self._span is None:
            if not self._more or len(self._buf) > MAX_PREFIX_BYTES:
                raise GatewayError(
                    400,
                    "invalid_request",
                    "missing 'model': the form must name the model in a 'model' field before "
                    f"the file (within its first {MAX_PREFIX_BYTES} bytes)",
                    param="model",
                )
            self._buf += await self._next()
            self._scan()
        start, end = self._span
        raw = self._buf[start:end]
        try:
            model = raw.decode()
        except UnicodeDecodeError:
            model = ""
        if not 0 < len(model) <= MAX_MODEL_CHARS:
            raise GatewayError(
                400,
                "invalid_request",
                f"'model' must be a name of 1 to {MAX_MODEL_CHARS} characters",
                param="model",
            )
        return model

    def _scan(self) -> None:
        """Parse the complete parts of the prefix, stopping at the ``model`` one."""
        buf, delim = self._buf, self._delim
        while True:
            if self._pos < 0:
                i = buf.find(delim)
                if i < 0:
                    return
                self._pos = i + len(delim)
            head_end = buf.find(b"\r\n\r\n", self._pos)
            if head_end < 0:
                return
            value_start = head_end + 4
            end = buf.find(b"\r\n" + delim, value_start)
            if end < 0:
                return
            if _field_name(buf[self._pos : head_end]) == b"model":
                self._span = (value_start, end)
                return
            self._pos = end + 2 + len(delim)

    def rename(self, model: str) -> int:
        """Put ``model`` in place of the form's model value; the change in body length."""
        assert self._span is not None
        start, end = self._span
        new = model.encode()
        self._buf = self._buf[:start] + new + self._buf[end:]
        self._span = (start, start + len(new))
        return len(new) - (end - start)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The prefix, then each chunk as the client sends it (413 past the limit)."""
        prefix, self._buf = self._buf, b""
        yield prefix
        while self._more:
            yield await self._next()
