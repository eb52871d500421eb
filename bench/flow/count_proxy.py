"""Counting TCP proxy in front of the Prefect API.

    python count_proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT COUNT_FILE

Bytes are relayed unchanged in both directions. The client->server stream is parsed just
enough to count HTTP/1.1 requests (Content-Length / chunked bodies); after a WebSocket
upgrade (the Python SDK sends task-run events over `/api/events/in`) every client data frame
is counted as one request-equivalent. Counts are rewritten to COUNT_FILE (JSON) on change.
"""
import asyncio
import json
import re
import sys

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

counts = {"http": 0, "ws_messages": 0, "ws_connections": 0, "by_path": {}}
count_file = sys.argv[4]


def save():
    with open(count_file + ".tmp", "w") as f:
        json.dump(counts, f)
    import os

    os.replace(count_file + ".tmp", count_file)


class Reader:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    async def exactly(self, n):
        data = await self.r.readexactly(n)
        self.w.write(data)
        return data

    async def line(self):
        data = await self.r.readuntil(b"\r\n")
        self.w.write(data)
        return data


async def client_to_server(reader, writer):
    src = Reader(reader, writer)
    try:
        while True:
            request_line = await src.line()
            if not request_line.strip():
                continue
            headers = {}
            while True:
                h = await src.line()
                if h == b"\r\n":
                    break
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            await writer.drain()
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "?"
            path = UUID.sub("{id}", path)
            key = f"{parts[0]} {path}"
            counts["http"] += 1
            counts["by_path"][key] = counts["by_path"].get(key, 0) + 1
            save()
            if headers.get("upgrade", "").lower() == "websocket":
                counts["ws_connections"] += 1
                await websocket_frames(src, writer)
                return
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await src.line()).split(b";")[0], 16)
                    await src.exactly(size + 2)
                    if size == 0:
                        break
            else:
                n = int(headers.get("content-length", "0"))
                if n:
                    await src.exactly(n)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def websocket_frames(src, writer):
    while True:
        b0, b1 = await src.exactly(2)
        opcode = b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await src.exactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await src.exactly(8), "big")
        if b1 & 0x80:
            await src.exactly(4)
        if n:
            await src.exactly(n)
        await writer.drain()
        if opcode in (1, 2):
            counts["ws_messages"] += 1
            save()


async def server_to_client(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def handle(creader, cwriter):
    sreader, swriter = await asyncio.open_connection(sys.argv[2], int(sys.argv[3]))
    await asyncio.gather(
        client_to_server(creader, swriter), server_to_client(sreader, cwriter)
    )


async def main():
    save()
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
