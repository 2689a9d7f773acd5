"""Serve the embedded chain over JSON-RPC on loopback, for workers in other processes.

Flower's simulation engine runs ClientApps in Ray worker processes, which cannot share
the in-process EVM object. This bridge answers standard JSON-RPC over HTTP on
127.0.0.1 by forwarding each request to the embedded chain's provider, one at a time,
so those workers use the same chain through an ordinary ``HTTPProvider``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .node import ChainNode


def _to_json(value: Any) -> Any:
    """Tester results carry bytes and ints; JSON-RPC wants 0x-hex for both."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


class JsonRpcBridge:
    """A loopback HTTP JSON-RPC endpoint in front of an embedded :class:`ChainNode`."""

    def __init__(self, node: ChainNode) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                # Through web3's request manager, so the tester middleware translates
                # wire-format parameters exactly as for an in-process caller.
                result = self._node.w3.manager.request_blocking(request["method"], request.get("params", []))
            except Exception as exc:  # noqa: BLE001 - becomes a JSON-RPC error for the caller
                data = getattr(exc, "data", None)
                if data is None and exc.args:
                    from .contract import _tester_revert_data

                    raw = _tester_revert_data(exc.args[0])
                    data = "0x" + raw.hex() if raw is not None else None
                error = {"code": 3, "message": str(getattr(exc, "message", None) or exc), "data": data}
                return {"jsonrpc": "2.0", "id": request.get("id"), "error": error}
        return {"jsonrpc": "2.0", "id": request.get("id"), "result": _to_json(result)}

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
