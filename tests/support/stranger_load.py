"""A stranger's load, from a process of its own: blocking sockets, one thread per connection, bounded in time.

``python -m tests.support.stranger_load PORT SECONDS CONNECTIONS BODY_KIND`` sends analytics loads
with made-up tokens as fast as the proxy answers them, each with a 1 MiB body (``nested``:
arrays 28 deep, the costliest to parse; ``flat``: one long string), and prints how many
answers came back by status, as JSON, when the time is up.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter

PATH = b"/api/v4/projects/1/product_analytics/request/load"
MIB = 1024 * 1024


def body(kind: str) -> bytes:
    if kind == "nested":
        unit = b"[" * 28 + b"1" + b"]" * 28
        parts = [unit] * (MIB // (len(unit) + 1) - 2)
        return b'{"query": {"x": [' + b",".join(parts) + b"]}}"
    return b'{"query": {"x": "' + b"y" * (MIB - 40) + b'"}}'


def gzip_bomb(inflated_mib: int) -> bytes:
    """A valid gzip body of about 1 MiB that inflates to a JSON load body of ``inflated_mib`` MiB (zeros in a string).

    Built in a fraction of a second: the 1 MiB block of zeros is compressed once after a full flush (so its
    compressed bytes do not depend on what came before) and repeated; the trailer's CRC is the whole body's."""
    prefix, suffix, chunk = b'{"query": {"x": "', b'"}}', b"0" * MIB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(suffix) + deflate.flush()
    crc = zlib.crc32(prefix)
    for _ in range(inflated_mib):
        crc = zlib.crc32(chunk, crc)
    size = len(prefix) + inflated_mib * MIB + len(suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + head + block * inflated_mib + tail + struct.pack("<II", zlib.crc32(suffix, crc), size % 2**32)


def one(port: int, payload: bytes) -> int:
    token = f"glpat-stranger-{secrets.token_hex(8)}".encode()
    head = b"POST %s HTTP/1.1\r\nHost: p\r\nPRIVATE-TOKEN: %s\r\nContent-Type: application/json\r\n" % (PATH, token)
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        with contextlib.suppress(OSError):  # answered (and closed) before the whole body went: not waited for
            conn.sendall(head + payload)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else 0


def main() -> None:
    port, seconds, connections, kind = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    payload = body(kind)
    deadline = time.monotonic() + seconds
    counts: Counter[int] = Counter()
    lock = threading.Lock()

    def loop() -> None:
        while time.monotonic() < deadline:
            try:
                status = one(port, payload)
            except OSError:
                status = -1
            with lock:
                counts[status] += 1

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({str(k): v for k, v in counts.items()}))


if __name__ == "__main__":
    main()
