"""The node's TOML configuration (an edge).

Unknown keys and bad values are refused with one line naming the key and what is accepted, so a
typo never silently falls back to a default. A missing `listen` reads as 0.0.0.0:7600, and
`NodeConfig.listen_set` says so: `anonmail node` takes that default on a test network only, and
refuses to start a main-network node until `listen` is set here or given with --listen.
Example (what `anonmail node --init --listen ...` writes):

    [node]
    listen = "0.0.0.0:7600"        # where to accept connections
    advertise = "203.0.113.7:7600" # what to put in our NodeCert, if not the listen address
    bootstrap = ["198.51.100.1:7600"]
    trusted_cas = []               # CA keys (hex) whose name@domain certificates we accept

    [network]
    name = "main"                  # or "test": a local testnet (cheap puzzle, loopback allowed)
    # puzzle_bits = 4              # testnet only

    [agent]                        # `anonmail run`'s user agent
    check_interval = 300           # seconds between inbox checks, on average (jittered ±50%)
    # anon_delay = 0.5             # testnet only: mean of Z's hold of an anonymous STORE/APPEND

    [gateway]                      # `anonmail run`'s mail-client gateway; "off" disables one
    smtp = "127.0.0.1:2587"        # SMTP submission
    pop3 = "127.0.0.1:2110"
    imap = "127.0.0.1:2143"

The gateway listens on loopback addresses only: it speaks plaintext (no TLS), so a non-loopback
address is refused.

`[agent] anon_delay` is the mean, in seconds, of the exponential hold the anonymizer Z is asked
to make before each anonymous STORE and APPEND (anon/options.py `delay_mean`; docs/anonymity.md).
On the main network it is fixed at the measured default (5 s): a sender who asked for less would
link more easily, and one whose holds differ from everyone else's would stand out to Z, so the
key is refused there. A testnet defaults to 0.5 s (its nodes sit on one machine, with nothing
to hide; commands answer in seconds, not tens of seconds) and may set 0 to 60.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anonmail import wire
from anonmail.anon.messages import MAX_FORWARD_DELAY_MS
from anonmail.anon.options import DEFAULT as ANON_DEFAULT
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.records import params as params_mod
from anonmail.records.certs import Endpoint
from anonmail.records.params import NetworkParams


@dataclass(frozen=True)
class NodeConfig:
    listen: Endpoint
    advertise: Endpoint | None
    bootstrap: tuple[Endpoint, ...]
    params: NetworkParams
    trusted_cas: frozenset[bytes] = frozenset()
    listen_set: bool = True  # False: no [node] listen in the file, `listen` is the default
    check_interval: float = 300.0  # [agent]: seconds between inbox checks, on average
    anon_delay: float = ANON_DEFAULT.delay_mean  # [agent]: mean of Z's hold (testnets only)
    gateway: GatewayEndpoints = field(default_factory=lambda: GatewayEndpoints())


@dataclass(frozen=True)
class GatewayEndpoints:
    """Where `anonmail run` serves mail clients (None: that service is off)."""

    smtp: Endpoint | None = Endpoint("127.0.0.1", 2587)  # noqa: RUF009 -- frozen, immutable
    pop3: Endpoint | None = Endpoint("127.0.0.1", 2110)  # noqa: RUF009
    imap: Endpoint | None = Endpoint("127.0.0.1", 2143)  # noqa: RUF009


DEFAULT_PORT = 7600
TESTNET_ANON_DELAY = 0.5  # seconds: a testnet's default `[agent] anon_delay`
MAX_ANON_DELAY = MAX_FORWARD_DELAY_MS // 1000  # seconds: the longest hold Z accepts
_TESTNET_TUNABLES = {"puzzle_bits", "k", "alpha", "disjoint_paths", "replication",
                     "rpc_timeout_ms", "refresh_interval"}


def template(listen: str | None = f"0.0.0.0:{DEFAULT_PORT}", bootstrap: tuple[str, ...] = (),
             network: str = "main", extra_network: dict[str, int] | None = None) -> str:
    """A config.toml; `listen` None leaves the line commented out (a main-network node then
    refuses to start until it is set)."""
    boot = ", ".join(f'"{b}"' for b in bootstrap)
    listen_line = f'listen = "{listen}"' if listen is not None else \
        f'# listen = "0.0.0.0:{DEFAULT_PORT}"  # required on the main network: where to accept ' \
        "connections"
    lines = [
        "# anonmail node configuration",
        "[node]",
        listen_line,
        '# advertise = "203.0.113.7:7600"  # the public address others should dial',
        f"bootstrap = [{boot}]",
        "",
        "[network]",
        f'name = "{network}"',
    ]
    lines += [f"{k} = {v}" for k, v in (extra_network or {}).items()]
    return "\n".join(lines) + "\n"


def _endpoint(value: Any, key: str) -> Endpoint:
    if not isinstance(value, str):
        raise UserError(f"config: {key} must be a string like \"1.2.3.4:7600\"")
    try:
        return Endpoint.parse(value)
    except UserError as e:
        raise UserError(f"config: {key}: {e}") from None


def parse(text: str, source: str = "config.toml") -> NodeConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source} is not valid TOML ({e}); fix it or delete it to start over") \
            from None
    unknown = set(data) - {"node", "network", "agent", "gateway"}
    if unknown:
        raise UserError(f"{source}: unknown section [{sorted(unknown)[0]}]; use [node], "
                        "[network], [agent], [gateway]")
    node = data.get("node", {})
    net = data.get("network", {})
    bad = set(node) - {"listen", "advertise", "bootstrap", "trusted_cas"}
    if bad:
        raise UserError(f"{source}: unknown key node.{sorted(bad)[0]}; "
                        "use listen, advertise, bootstrap, trusted_cas")
    listen = _endpoint(node.get("listen", f"0.0.0.0:{DEFAULT_PORT}"), "node.listen")
    advertise = _endpoint(node["advertise"], "node.advertise") if "advertise" in node else None
    boot_list = node.get("bootstrap", [])
    if not isinstance(boot_list, list):
        raise UserError(f"{source}: node.bootstrap must be a list of \"host:port\" strings")
    bootstrap = tuple(_endpoint(b, "node.bootstrap") for b in boot_list)
    trusted_cas = _ca_keys(node.get("trusted_cas", []), source)

    name = net.get("name", "main")
    if name == "main":
        params = params_mod.MAINNET
        if set(net) - {"name"}:
            raise UserError(f"{source}: the main network's parameters are fixed; "
                            "only [network] name may be set")
    elif name == "test":
        bad = set(net) - {"name"} - _TESTNET_TUNABLES
        if bad:
            raise UserError(f"{source}: unknown key network.{sorted(bad)[0]}; "
                            f"testnets may set {', '.join(sorted(_TESTNET_TUNABLES))}")
        changes = {k: v for k, v in net.items() if k != "name"}
        for k, v in changes.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise UserError(f"{source}: network.{k} must be a whole number")
        params = params_mod.testnet(**changes)
        try:  # the wire schema holds every parameter's bounds
            wire.decode(wire.encode(params), NetworkParams)
        except RemoteProtocolError as e:
            raise UserError(f"{source}: [network] value out of range ({e})") from None
    else:
        raise UserError(f'{source}: network.name must be "main" or "test", not {name!r}')
    check_interval, anon_delay = _agent(data.get("agent", {}), source, testnet=name == "test")
    return NodeConfig(listen, advertise, bootstrap, params, trusted_cas,
                      listen_set="listen" in node, check_interval=check_interval,
                      anon_delay=anon_delay, gateway=_gateway(data.get("gateway", {}), source))


def _agent(agent: Any, source: str, *, testnet: bool) -> tuple[float, float]:
    """[agent]: (check_interval, anon_delay), each checked (see the module's docstring)."""
    if not isinstance(agent, dict) or set(agent) - {"check_interval", "anon_delay"}:
        raise UserError(f"{source}: [agent] takes check_interval and (testnets) anon_delay")
    value = agent.get("check_interval", 300)
    if not _seconds(value) or not 10 <= value <= 86400:
        raise UserError(f"{source}: agent.check_interval must be seconds from 10 to 86400")
    if "anon_delay" not in agent:
        return float(value), TESTNET_ANON_DELAY if testnet else ANON_DEFAULT.delay_mean
    if not testnet:
        raise UserError(f"{source}: agent.anon_delay is for test networks; on the main network "
                        f"every sender asks Z for the same hold "
                        f"({ANON_DEFAULT.delay_mean:g} s mean), so remove the line")
    delay = agent["anon_delay"]
    if not _seconds(delay) or not 0 <= delay <= MAX_ANON_DELAY:
        raise UserError(f"{source}: agent.anon_delay must be seconds from 0 to {MAX_ANON_DELAY}")
    return float(value), float(delay)


def _seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _gateway(gateway: Any, source: str) -> GatewayEndpoints:
    if not isinstance(gateway, dict) or set(gateway) - {"smtp", "pop3", "imap"}:
        raise UserError(f"{source}: [gateway] takes smtp, pop3, imap (\"host:port\" or \"off\")")
    out: dict[str, Endpoint | None] = {}
    for name in ("smtp", "pop3", "imap"):
        if name not in gateway:
            continue
        value = gateway[name]
        if value == "off":
            out[name] = None
            continue
        ep = _endpoint(value, f"gateway.{name}")
        try:
            loopback = ipaddress.ip_address(ep.host).is_loopback
        except ValueError:
            loopback = ep.host == "localhost"
        if not loopback:
            raise UserError(f"{source}: gateway.{name} = {value!r} is not a loopback address: "
                            "the gateway speaks without TLS, so it listens on 127.0.0.1 or ::1 "
                            "only")
        out[name] = ep
    return GatewayEndpoints(**out)


def _ca_keys(value: Any, source: str) -> frozenset[bytes]:
    """CA public keys (64 hex digits each) whose address certificates the node accepts."""
    if not isinstance(value, list):
        raise UserError(f"{source}: node.trusted_cas must be a list of 64-hex-digit CA keys")
    keys = set()
    for item in value:
        try:
            key = bytes.fromhex(item) if isinstance(item, str) else b""
        except ValueError:
            key = b""
        if len(key) != 32:
            raise UserError(f"{source}: node.trusted_cas entry {item!r} is not 64 hex digits")
        keys.add(key)
    return frozenset(keys)


def load(path: Path) -> NodeConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no configuration at {path}; run `anonmail node --init` first") from None
    return parse(text, str(path))
