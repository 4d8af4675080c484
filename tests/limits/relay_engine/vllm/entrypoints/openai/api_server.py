"""A stand-in "engine" that relays every byte to one shared engine (``SHARED_ENGINE_PORT``).

Started by a daemon exactly as vLLM is (``python -m vllm.entrypoints.openai.api_server
--host H --port P ...``, this folder on ``PYTHONPATH``), it lets several daemons, each with
its own instance, send their requests to ONE engine the test watches (its in-flight count).
Standard library only; ends on SIGTERM like any process.
"""

from __future__ import annotations

import asyncio
import os
import sys


def _arg(name: str) -> str:
    return sys.argv[sys.argv.index(name) + 1]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", int(os.environ["SHARED_ENGINE_PORT"])
        )
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _main() -> None:
    server = await asyncio.start_server(_relay, _arg("--host"), int(_arg("--port")))
    print("Application startup complete.", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main())
