"""`anonmail node`, `anonmail status`, `anonmail lookup`: run a node and ask it things.

The node key is `node.key` in the home directory, sealed under a passphrase (commands/common.py
says where the passphrase comes from); `status` and `lookup` ask a running node through its
control socket and need no passphrase.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio

from anonmail import config as config_mod
from anonmail import crypto
from anonmail.clock import SystemClock
from anonmail.commands.common import (
    NODE_KEY,
    add_fast_kdf_option,
    add_home_option,
    add_passphrase_option,
    create_file,
    home_of,
    kdf_cost,
    load_config,
    new_config,
    passphrase,
)
from anonmail.control import call, serve_control
from anonmail.crypto import keyfile
from anonmail.errors import UserError
from anonmail.node.process import Node
from anonmail.paths import Home
from anonmail.records import ids
from anonmail.rng import SystemRng

NODE_KEY_PURPOSE = "node"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run a node (first time: --init)",
                       description="Run an anonmail node until Ctrl-C.")
    add_home_option(p)
    p.add_argument("--init", action="store_true",
                   help="create the node key and config in --home, then exit")
    p.add_argument("--listen", default=f"0.0.0.0:{config_mod.DEFAULT_PORT}",
                   help="with --init: address:port to accept connections on")
    p.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                   help="with --init: a node to join through (repeatable)")
    p.add_argument("--testnet", action="store_true",
                   help="with --init: configure a local test network")
    p.add_argument("--puzzle-bits", type=int, help="with --init --testnet: puzzle difficulty")
    add_passphrase_option(p)
    add_fast_kdf_option(p)
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="log everything (debug); logs never hold keys, mail or addresses")
    p.set_defaults(func=cmd_node)

    s = sub.add_parser("status", help="show a running node's id, endpoint and contacts")
    add_home_option(s)
    s.set_defaults(func=cmd_status)

    lk = sub.add_parser("lookup", help="ask a running node for the k closest nodes to a key")
    lk.add_argument("key", help="64 hex digits")
    lk.add_argument("-k", type=int, default=None)
    add_home_option(lk)
    lk.set_defaults(func=cmd_lookup)


def cmd_init(args: argparse.Namespace, home: Home) -> int:
    if home.node_key.exists() or home.config.exists():
        raise UserError(f"{home.root} already holds a node; refusing to overwrite its identity")
    text, cfg = new_config(args.listen, args.bootstrap, args.testnet, args.puzzle_bits)
    secret = passphrase(args, f"{NODE_KEY} in {home.node_key}", new=True)
    home.ensure()
    key = ids.grind_node_key(cfg.params.puzzle_bits, SystemRng())
    sealed = keyfile.seal(key.seed(), secret, NODE_KEY_PURPOSE, SystemRng(), kdf_cost(args))
    create_file(home.node_key, sealed)
    create_file(home.config, text.encode())
    print(f"created node {ids.node_id(key.public).hex()} in {home.root}")
    return 0


def open_node_key(args: argparse.Namespace, home: Home) -> crypto.SigningKey:
    """The node's signing key, unsealed with the passphrase (asked for only if the file is
    there)."""
    try:
        data = home.node_key.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no node key in {home.root}; run `anonmail node --init` first") from None
    except OSError as e:
        raise UserError(f"cannot read the node key {home.node_key}: {e.strerror}") from None
    secret = passphrase(args, f"{NODE_KEY} in {home.node_key}")
    return crypto.SigningKey(keyfile.open_sealed(data, secret, NODE_KEY_PURPOSE))


def cmd_node(args: argparse.Namespace) -> int:
    home = home_of(args)
    if args.init:
        return cmd_init(args, home)
    cfg = load_config(home)
    key = open_node_key(args, home)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    node = Node(key, cfg.params, SystemClock(), SystemRng(), listen=cfg.listen,
                advertise=cfg.advertise, bootstrap=cfg.bootstrap, contacts_file=home.contacts,
                store_file=home.store, trusted_cas=cfg.trusted_cas)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
        trio.run(_run_node, node, home)
    print("node stopped", flush=True)
    return 0


async def _run_node(node: Node, home: Home) -> None:
    with trio.CancelScope() as stop, trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, stop)
            try:
                await nursery.start(node.run)
            except OSError as e:
                raise UserError(f"cannot listen on {node.listen}: {e.strerror}; "
                                "choose another [node] listen in config.toml") from None
            await nursery.start(serve_control, node, home.control, stop)
            print(f"anonmail node {node.node_id.hex()} listening on {node.endpoint} "
                  f"with {len(node.dht.contacts())} contacts", flush=True)


async def _cancel_on_signal(signals: AsyncIterator[int], stop: trio.CancelScope) -> None:
    async for _ in signals:
        stop.cancel()
        return


def _ask(home: Home, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the node running in `home`, over its control socket."""
    try:
        return call(home.control, request)
    except OSError as e:  # no permission, a timeout, the node went away mid-answer
        raise UserError(f"cannot talk to the node at {home.root}: {e.strerror or e}") from None
    except ValueError:
        raise UserError(f"the node at {home.root} gave an answer that is not JSON") from None


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(home_of(args), {"op": "status"})
    for k in ("node_id", "endpoint", "network", "contacts"):
        print(f"{k:9} {reply[k]}")
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    reply = _ask(home_of(args), {"op": "lookup", "key": args.key, "k": args.k})
    for nid in reply["nodes"]:
        print(nid)
    print(f"({len(reply['nodes'])} nodes, {reply['hops']} hops)", file=sys.stderr)
    return 0
