"""The multipart uploads' proxy: authenticated, read until the ``model`` field, admitted,
streamed to the engine as they arrive.

The order of the JSON routes' ``GatewayApp._proxy`` (see ``app.py`` and ``admission.py``),
with the body read by :class:`~studioctl.gateway.multipart.FormUpload`: the declared length
(413 above ``max_body_bytes``), the form's boundary, the key, the ``model`` field (nothing
is held yet), the tenant's concurrency and RPM, the model allowed and routed, a TPM check
(nothing reserved: audio has no token count before the answer; a tenant in TPM debt waits),
then :meth:`Relay.upload`. While it waits for a slot or a loading model the client's
disconnect is not watched: its body must stay unread until it is sent on (the wait is
bounded by the queue's own timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from studioctl.errors import GatewayBusy, GatewayError
from studioctl.gateway.accounting import Accounting, internal_error, log_unexpected
from studioctl.gateway.admission import AdmissionControl
from studioctl.gateway.asgi import Receive, Send
from studioctl.gateway.context import RequestContext
from studioctl.gateway.multipart import ClientGone, FormUpload, boundary_of
from studioctl.gateway.relay import Relay, shutting_down
from studioctl.gateway.routing import RouteTable
from studioctl.settings import GatewaySettings

__all__ = ["FormProxy"]


async def _no_disconnect() -> dict[str, Any]:
    """A ``receive`` for the waits of an upload: its body must stay unread, so its client's
    disconnect is not watched there (the wait is bounded by the queue's own timeout)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class FormProxy:
    """Serves multipart uploads (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        admission: AdmissionControl,
        accounting: Accounting,
        relay: Relay,
        routes: RouteTable,
        release: Callable[[RequestContext], None],
    ) -> None:
        """``release``: gives back what an admitted request took (the gateway's own)."""
        self.settings = settings
        self.admission = admission
        self.accounting = accounting
        self.relay = relay
        self.routes = routes
        self._release = release

    async def serve(
        self,
        ctx: RequestContext,
        credentials: tuple[bytes | None, bytes | None],
        length: bytes | None,
        ctype: bytes | None,
        receive: Receive,
        send: Send,
    ) -> None:
        """Serve one upload, ``ctx`` (see the module docstring); every path accounts it and
        gives back what it took."""
        admission = self.admission
        try:
            declared = admission.declared_length(length)
            boundary = boundary_of(ctype)
            assert ctype is not None
            ctx.tenant = tenant = admission.authenticate(*credentials)  # bearer, X-API-Key
            upload = FormUpload(receive, boundary, self.settings.max_body_bytes)
            ctx.model = await upload.find_model()
            try:
                ctx.admission = await admission.limiter.acquire(tenant)
            except GatewayBusy as busy:
                await admission.park(ctx, busy, _no_disconnect)
        except GatewayError as exc:
            await self.accounting.refuse(send, ctx, exc)
            return
        except ClientGone:
            return
        except asyncio.CancelledError:
            if not ctx.drained:
                raise  # not ours (the server is stopping): nothing is held yet
            ctx.task.uncancel()
            await self.accounting.refuse(send, ctx, shutting_down())
            return
        except Exception as exc:
            log_unexpected(exc, "reading an upload")
            await self.accounting.refuse(send, ctx, internal_error())
            return
        chunks = upload.chunks()
        try:
            upstream = await admission.route_to(ctx, _no_disconnect)
            assert ctx.admission is not None and ctx.model is not None
            await ctx.admission.reserve_tokens(prompt_tokens=0, max_output_tokens=0)  # TPM debt
            ctx.exact = True
            if upstream.engine_names and ctx.model not in upstream.engine_names:
                delta = upload.rename(upstream.engine_names[0])
                declared = None if declared is None else declared + delta
            self.routes.begin(upstream.instance_id)
            ctx.upstream = upstream
            await self.relay.upload(ctx, ctype, declared, chunks, send, receive)
        except GatewayError as exc:
            await self.accounting.refuse(send, ctx, exc)
        except asyncio.CancelledError:
            if not ctx.drained:
                raise
            ctx.task.uncancel()
            await self.accounting.fail(send, ctx, shutting_down())
        except Exception as exc:
            log_unexpected(exc, "serving an upload")
            await self.accounting.fail(send, ctx, internal_error())
        finally:
            try:
                await chunks.aclose()  # an upload cut short by an early answer: end it now
            finally:
                self._release(ctx)


def upload_headers(
    headers: Iterable[tuple[bytes, bytes]], key_header: bytes | None
) -> tuple[bytes | None, ...]:
    """(Authorization, the API-key header, Content-Length, Content-Type, Origin,
    X-Request-Id) of an upload's request head, in one pass."""
    authorization = api_key = length = ctype = origin = sent_id = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value
        elif name == b"content-length":
            length = value
        elif name == b"content-type":
            ctype = value
        elif name == b"origin":
            origin = value
        elif name == key_header:
            api_key = value
        elif name == b"x-request-id":
            sent_id = value
    return authorization, api_key, length, ctype, origin, sent_id
