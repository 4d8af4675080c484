"""The one HTTP client the daemon's control plane uses toward engines.

Readiness and health probes, in-flight counts for drains and telemetry's /metrics scrapes
all go through one ``EngineHttp`` (one aiohttp session, one connection limit). The gateway's
hot path keeps its own raw connection pool (gateway/upstream.py): streaming relays are
another purpose with other needs.

The session is created on first use, inside the running loop (aiohttp binds a session to
the loop it is made in), so the object can be built before the loop runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Answers above this are refused, not read: no engine endpoint we call returns more
#: (a vLLM /metrics page is ~100 KiB), and a runaway body must not fill the daemon's memory.
MAX_BODY_BYTES = 16 << 20
CONNECTION_LIMIT = 64


@dataclass(frozen=True)
class EngineAnswer:
    status: int
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class EngineHttpError(OSError):
    """The engine could not be reached, did not answer in time, or answered too much."""


class EngineHttp:
    def __init__(
        self, *, limit: int = CONNECTION_LIMIT, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self._limit = limit
        self._max_body = max_body_bytes
        self._session: Any = None
        self._closed = False

    @property
    def session(self) -> Any:
        """The aiohttp session (created now if need be; None once closed). For callers that
        still speak aiohttp themselves; new code calls :meth:`get`."""
        if self._closed:
            return None
        return self._ensure()

    def _ensure(self) -> Any:
        if self._session is None:
            import aiohttp

            # force_close: engines restart on the same port; a kept-alive connection to the
            # previous process would fail the first probe of the new one.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, force_close=True)
            )
        return self._session

    async def get(self, url: str, *, api_key: str | None = None, timeout_s: float) -> EngineAnswer:
        """GET ``url`` (with the engine's key as a bearer token when it has one); any status
        is an answer. EngineHttpError when there is no answer within ``timeout_s``."""
        import aiohttp

        if self._closed:
            raise EngineHttpError(f"GET {url}: the engine HTTP client is closed")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        try:
            async with self._ensure().get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s), headers=headers
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > self._max_body:
                        raise EngineHttpError(f"GET {url}: answer above {self._max_body} bytes")
                    chunks.append(chunk)
                return EngineAnswer(resp.status, b"".join(chunks))
        except EngineHttpError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # OSError: a reset the transport raises as is (aiohttp wraps most, not all).
            raise EngineHttpError(f"GET {url}: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
