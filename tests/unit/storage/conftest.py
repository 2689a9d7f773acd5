"""A tiny stand-in for an IPFS node's RPC API, which can be told to misbehave.

It speaks just enough of ``/api/v0`` (``add``, ``cat``, ``block/stat``, ``pin/add``,
``pin/ls``, ``id``) for :class:`~deai_flower.storage.IpfsStore`, over real HTTP on loopback, so the
store's transport, error mapping and local verification are exercised without a daemon.
Its CIDs come from the project's own ``compute_cid``; conformance with real IPFS nodes
is what ``tests/integration/ipfs`` checks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest

from deai_flower.storage import compute_cid


@dataclass
class FakeIpfsNode:
    """State and knobs of the fake node; tests flip the knobs."""

    api_addr: str = ""
    blobs: dict[str, bytes] = field(default_factory=dict)
    pins: set[str] = field(default_factory=set)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    report_cid: str | None = None  # add: answer with this CID instead of the real one
    corrupt_cat: bool = False  # cat: flip one bit of the content
    extra_cat_bytes: int = 0  # cat: append this many bytes
    delay_s: float = 0.0  # every call: wait this long before answering
    drop_first: int = 0  # close this many connections without answering
    break_cat: int = 0  # cut off this many cat replies halfway

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, chunked (as ipfshttpclient streams it) or with a length."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return bytes(body)
            body += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", 0)))


def _file_part(body: bytes, content_type: str) -> bytes:
    """The content of the single file part of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    part = body.split(b"--" + boundary)[1]
    content = part.split(b"\r\n\r\n", 1)[1]
    return content[: -len(b"\r\n")]


def _handler(node: FakeIpfsNode) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, message: str) -> None:
            self._send(500, json.dumps({"Message": message, "Code": 0, "Type": "error"}).encode())

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            path = url.path.removeprefix("/api/v0/")
            query = dict(parse_qsl(url.query))
            node.requests.append((path, query))
            body = _read_body(self)
            if node.drop_first > 0:
                node.drop_first -= 1
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if node.delay_s:
                time.sleep(node.delay_s)
            arg = query.get("arg", "")
            if path == "add":
                data = _file_part(body, self.headers["Content-Type"])
                cid = compute_cid(data)
                node.blobs[cid] = data
                if query.get("pin") == "true":
                    node.pins.add(cid)
                reply = {"Name": cid, "Hash": node.report_cid or cid, "Size": str(len(data))}
                self._send(200, json.dumps(reply).encode() + b"\n")
            elif path == "cat":
                if arg not in node.blobs:
                    return self._error(f"failed to cat {arg}: block not found")
                data = bytearray(node.blobs[arg]) + b"\x00" * node.extra_cat_bytes
                if node.corrupt_cat and data:
                    data[len(data) // 2] ^= 0x01
                if node.break_cat > 0:
                    node.break_cat -= 1
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(bytes(data[: len(data) // 2]))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(200, bytes(data), "text/plain")
            elif path == "block/stat":
                if arg not in node.blobs:
                    return self._error(f"block/stat {arg}: block was not found locally (offline)")
                self._send(200, json.dumps({"Key": arg, "Size": len(node.blobs[arg])}).encode())
            elif path == "pin/add":
                if arg not in node.blobs:
                    return self._error(f"pin: block {arg} not found")
                node.pins.add(arg)
                self._send(200, json.dumps({"Pins": [arg]}).encode())
            elif path == "pin/ls":
                if arg not in node.pins:
                    return self._error(f"path '{arg}' is not pinned")
                self._send(200, json.dumps({"Keys": {arg: {"Type": "recursive"}}}).encode())
            elif path == "id":
                self._send(200, json.dumps({"ID": "fake", "AgentVersion": "fake-ipfs/0"}).encode())
            else:
                self._send(404, b"404 page not found", "text/plain")

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (the timeout tests) breaks the pipe; that is expected


@pytest.fixture
def fake_ipfs() -> Iterator[FakeIpfsNode]:
    node = FakeIpfsNode()
    server = _QuietServer(("127.0.0.1", 0), _handler(node))
    node.api_addr = f"/ip4/127.0.0.1/tcp/{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
