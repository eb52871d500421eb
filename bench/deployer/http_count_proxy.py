"""Counting HTTP/1.1 proxy for bench/deployer/vs_seed.sh: one JSON line per request.

    python http_count_proxy.py LISTEN_PORT UPSTREAM_PORT LOG_FILE

Bytes are relayed unchanged in both directions to 127.0.0.1:UPSTREAM_PORT. The client->server
stream is parsed just enough to find each request (Content-Length or chunked body) and to name
it: `op` is the AWS operation (the X-Amz-Target suffix of JSON protocols such as ECS and ECR,
or `Action=` of query protocols such as CloudFormation and STS), else empty; `bytes` is the
request body's size (what a registry push uploads). Put in front of moto, it counts each side's
AWS API calls; in front of a registry, the bytes and manifests pushed.
"""
import asyncio
import json
import re
import sys

listen_port, upstream_port, log_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
log = open(log_path, "a", buffering=1)
ACTION = re.compile(rb"(?:^|&)Action=([A-Za-z0-9]+)")


class Relay:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    async def line(self):
        data = await self.r.readuntil(b"\r\n")
        self.w.write(data)
        return data

    async def body(self, n, keep):
        """Relay n bytes; return the first `keep` of them."""
        head = b""
        while n:
            data = await self.r.read(min(n, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", n)
            if len(head) < keep:
                head += data[: keep - len(head)]
            self.w.write(data)
            await self.w.drain()
            n -= len(data)
        return head


async def client_to_server(reader, writer):
    src = Relay(reader, writer)
    try:
        # Docker tries TLS first on a loopback registry and falls back to plain HTTP when the
        # handshake fails: relay a TLS hello untouched (and uncounted) so the fallback is as
        # fast as without the proxy.
        first = await reader.readexactly(1)
        writer.write(first)
        if first == b"\x16":
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return
        prefix = first
        while True:
            request_line = prefix + await src.line()
            prefix = b""
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
            method, path = (request_line.decode("latin-1").split() + ["?", "?"])[:2]
            keep = 4096 if "x-amz-target" not in headers else 0
            size, head = 0, b""
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    n = int((await src.line()).split(b";")[0], 16)
                    chunk = await src.body(n + 2, keep)
                    head += chunk[: max(0, keep - len(head))]
                    size += n
                    if n == 0:
                        break
            else:
                size = int(headers.get("content-length", "0"))
                head = await src.body(size, keep) if size else b""
            op = headers.get("x-amz-target", "").rsplit(".", 1)[-1]
            if not op:
                m = ACTION.search(head)
                op = m.group(1).decode() if m else ""
            log.write(json.dumps({"method": method, "path": path.split("?")[0], "op": op, "bytes": size}) + "\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


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
    sreader, swriter = await asyncio.open_connection("127.0.0.1", upstream_port)
    await asyncio.gather(client_to_server(creader, swriter), server_to_client(sreader, cwriter))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
