"""The local control socket of a running node (an edge).

A Unix socket in the node's home directory, mode 0600 inside a 0700 directory, so only the user
who runs the node can talk to it. One JSON object per line each way; requests are capped at
64 KiB. Operations: `status` (with the node's pid), `lookup` (key as 64 hex digits, optional k),
`contacts`, `stop`; under `anonmail run`, also the agent's (`Extra`: `job`, and the agent's part
of `status`), whose requests may carry a whole message (so the cap is then MAX_JOB_REQUEST).
Used by `anonmail status` / `anonmail lookup`, by `anonmail node` to refuse
starting a second node in the same home (`probe`), and by tests that drive real node processes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from anonmail.errors import AnonmailError, UserError
from anonmail.node.process import Node
from anonmail.records import ids

log = logging.getLogger("anonmail.control")
MAX_REQUEST = 64 * 1024
MAX_JOB_REQUEST = 160 << 20  # a 100 MiB message in base64, from the socket's owner only

# More operations, by a running agent: (op, request) -> reply, or None when the op is not its.
Extra = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


def _status(node: Node) -> dict[str, Any]:
    return {
        "node_id": node.node_id.hex(),
        "endpoint": str(node.endpoint),
        "contacts": len(node.dht.contacts()),
        "restored": node.restored,
        "network": node.params.network_id.decode(errors="replace"),
        "pid": os.getpid(),
    }


async def _dispatch(node: Node, req: dict[str, Any], stop: trio.CancelScope,
                    extra: Extra | None) -> dict[str, Any]:
    op = req.get("op")
    if op == "status":
        more = None if extra is None else await extra("status", req)
        return {**_status(node), **(more or {})}
    if extra is not None and isinstance(op, str):
        reply = await extra(op, req)
        if reply is not None:
            return reply
    if op == "contacts":
        return {"contacts": [c.node_id.hex() for c in node.dht.contacts()]}
    if op == "lookup":
        try:
            key = bytes.fromhex(str(req.get("key", "")))
        except ValueError:
            key = b""
        if len(key) != ids.ID_BYTES:
            raise UserError("lookup key must be 64 hex digits")
        k = req.get("k")
        if k is not None and (not isinstance(k, int) or not 1 <= k <= 64):
            raise UserError("k must be a whole number from 1 to 64")
        result = await node.lookup(key, k)
        return {"nodes": [c.node_id.hex() for c in result.nodes], "hops": result.hops}
    if op == "stop":
        stop.cancel()
        return {"stopping": True}
    raise UserError(f"unknown control operation {op!r}")


async def _serve_one(node: Node, stream: trio.SocketStream, stop: trio.CancelScope,
                     extra: Extra | None) -> None:
    cap = MAX_REQUEST if extra is None else MAX_JOB_REQUEST
    async with stream:
        buf = bytearray()
        while True:
            chunk = await stream.receive_some(1 << 16)
            if not chunk:
                return
            end = chunk.find(b"\n")
            buf += chunk if end < 0 else chunk[:end]
            if len(buf) > cap:
                return
            if end >= 0:
                break
        try:
            req = json.loads(buf)
            if not isinstance(req, dict):
                raise UserError("a control request is a JSON object")
            reply = {"ok": True, **await _dispatch(node, req, stop, extra)}
        except (ValueError, AnonmailError) as e:
            reply = {"ok": False, "error": str(e)}
        await stream.send_all(json.dumps(reply).encode() + b"\n")


async def serve_control(node: Node, path: Path, stop: trio.CancelScope, *,
                        extra: Extra | None = None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is born 0600
    try:
        await sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot create the control socket {path}: {e.strerror or e}") from None
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_one, node, stream, stop, extra)
    finally:
        path.unlink(missing_ok=True)


def call(path: Path, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to a running node (blocking; for the command line and tests). A
    refusal (`ok` false) is a UserError with the node's one line."""
    if not path.exists():
        raise UserError(f"no node is running with home {path.parent} (start `anonmail node`)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise UserError(f"the node at {path.parent} is not running") from None
        reply = _exchange(s, request)
    if not reply.get("ok"):
        raise UserError(str(reply.get("error")))
    return reply


def probe(path: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """Whether a node serves the control socket `path`: None when nothing listens there (no
    socket, or a stale one a killed node left), else its `status` reply, or {} when something
    accepts the connection but gives no status (it is there all the same)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError:
            return None
        try:
            reply = _exchange(s, {"op": "status"})
        except (OSError, ValueError):
            return {}
    return reply if reply.get("ok") else {}


def _exchange(s: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
    """One request line out, one reply line back, on a connected control socket."""
    s.sendall(json.dumps(request).encode() + b"\n")
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    reply: dict[str, Any] = json.loads(buf) if buf else {"ok": False, "error": "no answer"}
    return reply
