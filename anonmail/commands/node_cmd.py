"""`anonmail node`, `anonmail status`, `anonmail lookup`: run a node and ask it things."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from anonmail import config as config_mod
from anonmail import crypto, ids, keyfile
from anonmail.clock import SystemClock
from anonmail.control import call, serve_control
from anonmail.errors import UserError
from anonmail.fileio import create_private
from anonmail.node import Node
from anonmail.paths import Home, default_home
from anonmail.rng import SystemRng

NODE_KEY_PURPOSE = "node"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run a node (first time: --init)",
                       description="Run an anonmail node until Ctrl-C.")
    p.add_argument("--home", type=Path, help="node directory (default: per-user data dir)")
    p.add_argument("--init", action="store_true",
                   help="create the node key and config in --home, then exit")
    p.add_argument("--listen", default=f"0.0.0.0:{config_mod.DEFAULT_PORT}",
                   help="with --init: address:port to accept connections on")
    p.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                   help="with --init: a node to join through (repeatable)")
    p.add_argument("--testnet", action="store_true",
                   help="with --init: configure a local test network")
    p.add_argument("--puzzle-bits", type=int, help="with --init --testnet: puzzle difficulty")
    p.add_argument("--passphrase-file", type=Path,
                   help="read the key passphrase from this file (else $ANONMAIL_PASSPHRASE, "
                        "else a prompt)")
    p.add_argument("--fast-kdf", action="store_true", help=argparse.SUPPRESS)  # tests only
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="log everything (debug); logs never hold keys, mail or addresses")
    p.set_defaults(func=cmd_node)

    s = sub.add_parser("status", help="show a running node's id, endpoint and contacts")
    s.add_argument("--home", type=Path)
    s.set_defaults(func=cmd_status)

    lk = sub.add_parser("lookup", help="ask a running node for the k closest nodes to a key")
    lk.add_argument("key", help="64 hex digits")
    lk.add_argument("-k", type=int, default=None)
    lk.add_argument("--home", type=Path)
    lk.set_defaults(func=cmd_lookup)


def _home(args: argparse.Namespace) -> Home:
    return Home(args.home if args.home else default_home())


def _passphrase(args: argparse.Namespace, confirm: bool) -> str:
    if args.passphrase_file:
        try:
            text: str = args.passphrase_file.read_text(encoding="utf-8")
            return text.rstrip("\r\n")
        except OSError as e:
            raise UserError(f"cannot read passphrase file {args.passphrase_file}: "
                            f"{e.strerror}") from None
    env = os.environ.get("ANONMAIL_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        raise UserError("the node key needs a passphrase: use --passphrase-file or set "
                        "ANONMAIL_PASSPHRASE")
    first = getpass.getpass("Passphrase for the node key: ")
    if confirm and getpass.getpass("Again: ") != first:
        raise UserError("the passphrases differ; nothing was written")
    return first


def cmd_init(args: argparse.Namespace, home: Home) -> int:
    if home.node_key.exists() or home.config.exists():
        raise UserError(f"{home.root} already holds a node; refusing to overwrite its identity")
    extra = {}
    if args.puzzle_bits is not None:
        if not args.testnet:
            raise UserError("--puzzle-bits is for test networks (add --testnet)")
        extra["puzzle_bits"] = args.puzzle_bits
    text = config_mod.template(args.listen, tuple(args.bootstrap),
                               "test" if args.testnet else "main", extra)
    cfg = config_mod.parse(text)  # validate before writing anything
    passphrase = _passphrase(args, confirm=True)
    home.ensure()
    key = ids.grind_node_key(cfg.params.puzzle_bits, SystemRng())
    cost = crypto.INTERACTIVE if args.fast_kdf else crypto.MODERATE
    sealed = keyfile.seal(key.seed(), passphrase, NODE_KEY_PURPOSE, SystemRng(), cost)
    create_private(home.node_key, sealed)
    create_private(home.config, text.encode())
    print(f"created node {ids.node_id(key.public).hex()} in {home.root}")
    return 0


def load_key(home: Home, passphrase: str) -> crypto.SigningKey:
    try:
        data = home.node_key.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no node key in {home.root}; run `anonmail node --init` first") from None
    return crypto.SigningKey(keyfile.open_sealed(data, passphrase, NODE_KEY_PURPOSE))


def cmd_node(args: argparse.Namespace) -> int:
    home = _home(args)
    if args.init:
        return cmd_init(args, home)
    cfg = config_mod.load(home.config)
    key = load_key(home, _passphrase(args, confirm=False))
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


def cmd_status(args: argparse.Namespace) -> int:
    reply = call(_home(args).control, {"op": "status"})
    for k in ("node_id", "endpoint", "network", "contacts"):
        print(f"{k:9} {reply[k]}")
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    reply = call(_home(args).control, {"op": "lookup", "key": args.key, "k": args.k})
    for nid in reply["nodes"]:
        print(nid)
    print(f"({len(reply['nodes'])} nodes, {reply['hops']} hops)", file=sys.stderr)
    return 0
