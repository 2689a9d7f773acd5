"""Serve the embedded chain over JSON-RPC on loopback, for workers in other processes.

Flower's simulation engine runs ClientApps in Ray worker processes, which cannot share
the in-process EVM object. This bridge answers standard JSON-RPC over HTTP on
127.0.0.1 by forwarding each request to the embedded chain's provider, one at a time,
so those workers use the same chain through an ordinary ``HTTPProvider``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .node import ChainNode, JsonRpcError


class JsonRpcBridge:
    """A loopback HTTP JSON-RPC endpoint in front of an embedded :class:`ChainNode`."""

    def __init__(self, node: ChainNode) -> None:
        self._node = node
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        try:  # the node serializes requests to the EVM itself
            result = self._node.request(request["method"], request.get("params", []))
        except JsonRpcError as exc:
            error = {"code": exc.code, "message": exc.rpc_message, "data": exc.data}
            return {"jsonrpc": "2.0", "id": request.get("id"), "error": error}
        return {"jsonrpc": "2.0", "id": request.get("id"), "result": result}

    def start(self) -> str:
        """Start serving on a free loopback port; return the URL."""
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = json.loads(body)
                if isinstance(payload, list):
                    answer: Any = [bridge._answer(p) for p in payload]
                else:
                    answer = bridge._answer(payload)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence access logs
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="deai-jsonrpc-bridge", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
