"""One HTTP/1.1 answer read from a plain socket: the control client's wire format.

The CLI reads the daemon's answers without httpx or ``http.client`` (their imports cost more
than a ``studioctl status`` request itself); see ``studioctl.client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket


class HttpAnswer:
    """One HTTP/1.1 answer on a socket whose request said ``Connection: close``: the status
    line and headers are read at once; the body by Content-Length, chunks, or to the end.

    Just what the daemon (uvicorn) sends; anything else is a ``ConnectionError``, which the
    client reports as a lost daemon connection.
    """

    _MAX_HEAD = 64 * 1024

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        line = self._file.readline(self._MAX_HEAD)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        size = len(line)
        while True:
            line = self._file.readline(self._MAX_HEAD)
            size += len(line)
            if not line.endswith(b"\n") or size > self._MAX_HEAD:
                raise ConnectionError("the answer's head is cut or too long")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        length = self.headers.get("content-length")
        self._left: int | None = int(length) if length and length.isdigit() else None
        self._done = self.status in (204, 304) or self._left == 0

    def read_some(self) -> bytes:
        """The next piece of the body as it arrives (one chunk); b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            line = self._file.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                self._done = True
                return b""
            data = self._file.read(size)
            if len(data) < size or self._file.read(2) != b"\r\n":
                raise ConnectionError("the answer ended inside a chunk")
            return data
        if self._left is not None:
            data = self._file.read1(min(self._left, 65536))
            if not data:
                raise ConnectionError("the answer ended before its Content-Length")
            self._left -= len(data)
            self._done = self._left == 0
            return data
        data = self._file.read1(65536)
        self._done = not data
        return data

    def read_all(self, limit: int) -> bytes:
        """The whole body, or its first ``limit`` bytes and a little more (then stops)."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            data = self.read_some()
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._file.close()
        self._sock.close()
