"""`anonmail node`, `anonmail status`, `anonmail lookup`: run a node and ask it things.

The node key is `node.key` in the home directory, sealed under a passphrase (commands/common.py
says where the passphrase comes from); `status` and `lookup` ask a running node through its
control socket and need no passphrase.

`anonmail node` refuses, with one line and before it binds, joins or writes anything, what would
fail later or silently: a home whose control socket path is too long, a home whose node is
already running, a main-network node with no explicit listen address, a node key whose id does
not solve this network's puzzle (peers would refuse it). A busy port is one line too. SIGINT
(Ctrl-C) and SIGTERM both stop the node cleanly: the routing table is saved, "node stopped".
`--init` in a home with a config.toml (say, from `anonmail init`) but no node key creates the key
and keeps the config, changing only what --listen and --bootstrap say (docs/cli.md).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from anonmail.control import call, probe, serve_control
from anonmail.crypto import keyfile
from anonmail.errors import UserError, network_name
from anonmail.fileio import write_private
from anonmail.node.process import Node
from anonmail.paths import Home
from anonmail.records import ids
from anonmail.records import params as params_mod
from anonmail.records.certs import Endpoint
from anonmail.rng import SystemRng

NODE_KEY_PURPOSE = "node"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run a node (first time: --init)",
                       description="Run an anonmail node until Ctrl-C.")
    add_home_option(p)
    p.add_argument("--init", action="store_true",
                   help="create the node key and config in --home, then exit")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address:port to accept connections on (with --init: written to "
                        "config.toml; else overrides its [node] listen). Required on the main "
                        "network, here or in config.toml")
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

    s = sub.add_parser("status", help="show a running node's id, endpoint and contacts (and, "
                                      "under `anonmail run`, the agent and the gateway)")
    add_home_option(s)
    s.set_defaults(func=cmd_status)

    lk = sub.add_parser("lookup", help="ask a running node for the k closest nodes to a key")
    lk.add_argument("key", help="64 hex digits")
    lk.add_argument("-k", type=int, default=None)
    add_home_option(lk)
    lk.set_defaults(func=cmd_lookup)


def cmd_init(args: argparse.Namespace, home: Home) -> int:
    if home.node_key.exists():
        raise UserError(f"{home.root} already holds a node ({home.node_key.name}); refusing to "
                        "overwrite its identity")
    if home.config.exists():  # e.g. `anonmail init` came first: keep its config
        return _init_key_for_config(args, home)
    # A test network may listen on the default; a main-network config without --listen leaves
    # `listen` unset, and the node will not start until it is set.
    listen = args.listen or (f"0.0.0.0:{config_mod.DEFAULT_PORT}" if args.testnet else None)
    text, cfg = new_config(listen, args.bootstrap, args.testnet, args.puzzle_bits)
    secret = passphrase(args, f"{NODE_KEY} in {home.node_key}", new=True)
    home.ensure()
    key = ids.grind_node_key(cfg.params.puzzle_bits, SystemRng())
    sealed = keyfile.seal(key.seed(), secret, NODE_KEY_PURPOSE, SystemRng(), kdf_cost(args))
    create_file(home.node_key, sealed)
    create_file(home.config, text.encode())
    print(f"created node {ids.node_id(key.public).hex()} in {home.root}")
    return 0


def _init_key_for_config(args: argparse.Namespace, home: Home) -> int:
    """`node --init` in a home with a config.toml and no node key: create the key for the
    config's network and keep the config, changing only what --listen / --bootstrap say."""
    cfg = load_config(home)
    testnet = cfg.params.network_id != params_mod.MAINNET.network_id
    if args.testnet and not testnet:
        raise UserError(f"{home.config} is for the main network: drop --testnet, or use another "
                        "--home")
    if args.puzzle_bits is not None and args.puzzle_bits != cfg.params.puzzle_bits:
        raise UserError(f"{home.config} asks a {cfg.params.puzzle_bits}-bit puzzle: drop "
                        "--puzzle-bits (or change [network] puzzle_bits there first)")
    listen = None if args.listen is None else _endpoint("--listen", args.listen)
    bootstrap = [_endpoint("--bootstrap", b) for b in args.bootstrap]
    text = home.config.read_text(encoding="utf-8")  # load_config read it as UTF-8 already
    new_text, changes = set_node_keys(text, listen, bootstrap, home)
    new_cfg = config_mod.parse(new_text, str(home.config))
    secret = passphrase(args, f"{NODE_KEY} in {home.node_key}", new=True)
    if new_text != text:
        try:
            write_private(home.config, new_text.encode())
        except OSError as e:
            raise UserError(f"cannot write {home.config}: {e.strerror}") from None
    key = ids.grind_node_key(new_cfg.params.puzzle_bits, SystemRng())
    sealed = keyfile.seal(key.seed(), secret, NODE_KEY_PURPOSE, SystemRng(), kdf_cost(args))
    create_file(home.node_key, sealed)
    kept = "; ".join(changes) if changes else "unchanged"
    print(f"created node {ids.node_id(key.public).hex()} in {home.root} for the existing "
          f"{home.config.name} ({kept})")
    return 0


def _endpoint(option: str, value: str) -> str:
    try:
        return str(Endpoint.parse(value))
    except UserError as e:
        raise UserError(f"{option}: {e}") from None


def set_node_keys(text: str, listen: str | None, bootstrap: list[str],
                  home: Home) -> tuple[str, list[str]]:
    """config.toml's text with [node] listen set to `listen` (if given) and `bootstrap` added
    to [node] bootstrap, every other line kept; and what changed, in words. A file whose
    [node] lines this cannot edit (say, a bootstrap list over several lines) is refused with
    one line: edit it by hand."""
    old, lines = config_mod.parse(text, str(home.config)), text.splitlines()
    start = lines.index("[node]") if "[node]" in lines else -1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
               len(lines))
    changes: list[str] = []

    def put(key: str, line: str) -> None:  # replace `key = ...` (or `# key = ...`), or add it
        nonlocal start, end
        if start < 0:
            lines.insert(0, "[node]")
            start, end = 0, end + 1
        for pattern in (rf"\s*{key}\s*=", rf"\s*#\s*{key}\s*="):
            at = next((i for i in range(start + 1, end) if re.match(pattern, lines[i])), None)
            if at is not None:
                lines[at] = line
                return
        lines.insert(start + 1, line)
        end += 1

    if listen is not None and (not old.listen_set or str(old.listen) != listen):
        put("listen", f'listen = "{listen}"')
        changes.append(f"set listen = {listen}" +
                       (f" (was {old.listen})" if old.listen_set else ""))
    want = list(dict.fromkeys([*map(str, old.bootstrap), *bootstrap]))
    if len(want) > len(old.bootstrap):
        put("bootstrap", "bootstrap = [" + ", ".join(f'"{b}"' for b in want) + "]")
        changes.append(f"added bootstrap {', '.join(want[len(old.bootstrap):])}")
    new_text = "\n".join(lines) + "\n"
    try:
        new = config_mod.parse(new_text, str(home.config))
    except UserError:
        new = None
    if new is None or [str(ep) for ep in new.bootstrap] != want or \
            (listen is not None and str(new.listen) != listen):
        raise UserError(f"cannot edit [node] in {home.config}: set listen and bootstrap there "
                        "by hand, then run this again")
    return (new_text if changes else text), changes


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
    home.check_control_path()
    if args.init:
        return cmd_init(args, home)
    refuse_if_running(home)
    cfg = load_config(home)
    listen = listen_endpoint(args, cfg, home)
    key = open_node_key(args, home)
    check_puzzle(key, cfg, home)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    node = Node(key, cfg.params, SystemClock(), SystemRng(), listen=listen,
                advertise=cfg.advertise, bootstrap=cfg.bootstrap, contacts_file=home.contacts,
                store_file=home.store, trusted_cas=cfg.trusted_cas)
    run_until_stopped(node, home, listen,
                      lambda signals: _run_node(node, home, signals))
    print("node stopped", flush=True)
    return 0


def run_until_stopped(node: Node, home: Home, listen: Endpoint,
                      main: Callable[[tuple[signal.Signals, ...]], Awaitable[OSError | None]]
                      ) -> None:
    """`trio.run(main(stop signals))` for a process built around `node`: Ctrl-C before or after
    it runs is a quiet stop (signal receivers catch it while it runs), a lone UserError from a
    task is itself (not trio's group), and a listen address `main` could not bind is one line."""
    failed: OSError | None = None
    try:
        with contextlib.suppress(KeyboardInterrupt):
            failed = trio.run(main, stop_signals())
    except BaseExceptionGroup as group:  # trio wraps what a task raises
        error = only_user_error(group)
        if error is None:
            raise
        raise error from None
    if failed is not None:
        node.store_db.close()
        raise cannot_listen(home, listen, failed)


def refuse_if_running(home: Home) -> None:
    """One line if a node already serves this home's control socket (a second one would take
    over its socket and share its files)."""
    found = probe(home.control)
    if found is None:
        return
    where = ", ".join(f"{k} {found[k]}" for k in ("pid", "endpoint") if k in found)
    raise UserError(f"a node for this home is already running "
                    f"({where or f'its control socket {home.control} answers'}); "
                    "stop it or use another --home")


def listen_endpoint(args: argparse.Namespace, cfg: config_mod.NodeConfig, home: Home) -> Endpoint:
    """--listen, else config.toml's [node] listen; a main-network node needs one of them (the
    default, every interface on port 7600, is for test networks only)."""
    if args.listen is not None:
        try:
            return Endpoint.parse(args.listen)
        except UserError as e:
            raise UserError(f"--listen: {e}") from None
    if not cfg.listen_set and cfg.params.network_id == params_mod.MAINNET.network_id:
        raise UserError(f"a main-network node needs a listen address: set listen = "
                        f'"HOST:PORT" under [node] in {home.config}, or pass --listen HOST:PORT')
    return cfg.listen


def check_puzzle(key: crypto.SigningKey, cfg: config_mod.NodeConfig, home: Home) -> None:
    """Refuse a key whose node id does not solve the network's static puzzle: peers would
    refuse the node in every handshake."""
    solved, asked = ids.puzzle_bits_of_key(key.public), cfg.params.puzzle_bits
    if solved < asked:
        raise UserError(f"{home.node_key.name}'s id solves a {solved}-bit puzzle; this network "
                        f"asks {asked} bits: run `anonmail node --init` in a new home")


def cannot_listen(home: Home, listen: Endpoint, e: OSError) -> UserError:
    """The line for a listen address the node could not bind."""
    refuse_if_running(home)  # this home's own node may hold the port (it started meanwhile)
    if e.errno == errno.EADDRINUSE:
        return UserError(f"port {listen.port} is in use on {listen.host}: choose another "
                         f"`listen` in {home.config} or --listen")
    return UserError(f"cannot listen on {listen}: {e.strerror or e}; choose another `listen` "
                     f"in {home.config} or --listen")


def only_user_error(group: BaseExceptionGroup[BaseException]) -> UserError | None:
    """The UserError a (nested) exception group holds when it holds nothing else."""
    e: BaseException = group
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e if isinstance(e, UserError) else None


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, and SIGINT (Ctrl-C) unless this process was started with SIGINT ignored (as a
    shell starts a background job): both stop the node the same clean way."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGINT)


async def _run_node(node: Node, home: Home, signals: tuple[signal.Signals, ...]) -> OSError | None:
    """Run the node until a stop signal or the control socket's `stop`. Returns the error
    binding the listen address failed with (nothing started then), else None."""
    with trio.CancelScope() as stop, trio.open_signal_receiver(*signals) as received:
        try:
            await node.bind()
        except OSError as e:  # returned, not raised: raised in the nursery it arrives wrapped
            return e
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, received, stop)
            await nursery.start(node.run)
            await nursery.start(serve_control, node, home.control, stop)
            print(f"anonmail node {node.node_id.hex()} listening on {node.endpoint} "
                  f"with {len(node.dht.contacts())} contacts", flush=True)
            for line in bootstrap_warnings(node):
                print(f"anonmail node: {line}", file=sys.stderr, flush=True)
    return None


def bootstrap_warnings(node: Node) -> list[str]:
    """Lines about bootstrap nodes that said they are on another network, and about a node
    that reached none of its bootstrap nodes (it runs alone until a node contacts it)."""
    ours = network_name(node.params.network_id)
    lines = []
    for ep in node.bootstrap_endpoints:
        theirs = node.net.other_networks.get(str(ep))
        if theirs is not None:
            lines.append(f"the bootstrap node {ep} is on another network ({network_name(theirs)}; "
                         f"this node is on {ours}): check [network] name in config.toml")
    if node.bootstrap_endpoints and not node.dht.contacts() and not lines:
        tried = ", ".join(str(ep) for ep in node.bootstrap_endpoints)
        lines.append(f"no bootstrap node answered (tried {tried}; this node is on {ours}); it "
                     "runs alone until another node contacts it")
    return lines


async def cancel_on_signal(signals: AsyncIterator[int], stop: trio.CancelScope) -> None:
    async for _ in signals:
        stop.cancel()
        return


def _ask(home: Home, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the node running in `home`, over its control socket."""
    home.check_control_path()
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
    agent = reply.get("agent")
    if isinstance(agent, dict):  # `anonmail run`: the agent and the gateway too
        for line in agent_lines(agent, reply.get("gateway") or {}):
            print(line)
    return 0


def _when(t: Any, now: float) -> str:
    if not isinstance(t, int | float):
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    delta = t - now
    rel = f"in {delta:.0f} s" if delta >= 0 else f"{-delta:.0f} s ago"
    if abs(delta) >= 86400:
        rel = f"in {delta / 86400:.1f} days" if delta >= 0 else f"{-delta / 86400:.1f} days ago"
    return f"{stamp} ({rel})"


def agent_lines(agent: dict[str, Any], gateway: dict[str, Any]) -> list[str]:
    """`anonmail status`'s lines about the running agent and gateway."""
    now = time.time()
    ok = {True: "ok", False: "failed", None: ""}.get(agent.get("last_check_ok"), "")
    lines = [f"address   {agent.get('address')}",
             f"checked   {_when(agent.get('last_check'), now)} {ok}".rstrip(),
             f"next      {_when(agent.get('next_check'), now)}",
             f"outbox    {agent.get('outbox')} message(s)",
             f"cert      published {_when(agent.get('cert_published'), now)}; next "
             f"{_when(agent.get('cert_republish'), now)}"]
    if "held" in agent:  # pending messages the agent does not retrieve by itself
        held, expired = agent.get("held") or 0, agent.get("expired") or 0
        line = f"held      {held} unreadable, {expired} expired message(s)"
        if held or expired:
            line += ": `anonmail inbox` marks them, `anonmail discard ID` gives one up"
        lines.append(line)
    if agent.get("last_error"):
        lines.append(f"error     {agent['last_error']}")
    for name in ("smtp", "pop3", "imap"):
        lines.append(f"{name:9} {gateway.get(name, 'off')}")
    return lines


def cmd_lookup(args: argparse.Namespace) -> int:
    reply = _ask(home_of(args), {"op": "lookup", "key": args.key, "k": args.k})
    for nid in reply["nodes"]:
        print(nid)
    print(f"({len(reply['nodes'])} nodes, {reply['hops']} hops)", file=sys.stderr)
    return 0
