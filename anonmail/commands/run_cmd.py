"""`anonmail run`: one long-lived process per user (DESIGN.md §8) — the node, the user agent and
the mail-client gateway, each started with `nursery.start`, stopped by Ctrl-C or SIGTERM with one
line and exit status 0.

Both keys are opened once at start (the node key and the address key; the same passphrase
sources as every command). The control socket then serves the node's operations, the agent's
`status`, and `job` — the one-shot commands' network work (commands/jobs.py), so they neither
ask for the passphrase again nor write the Outbox and the permit book beside the agent. The
gateway's SMTP, POP3 and IMAP servers listen on the loopback addresses of config.toml's
[gateway] (gateway/), with the login in the home's `gateway-password` (created here if missing).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from typing import Any

import trio

from anonmail.agent.service import AgentService
from anonmail.clock import SystemClock
from anonmail.commands import common, jobs
from anonmail.commands.node_cmd import (
    bootstrap_warnings,
    cancel_on_signal,
    check_puzzle,
    listen_endpoint,
    only_user_error,
    open_node_key,
    refuse_if_running,
    run_until_stopped,
)
from anonmail.config import NodeConfig
from anonmail.control import serve_control
from anonmail.errors import UserError
from anonmail.gateway import auth
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.serve import serve_gateway
from anonmail.node.process import Node
from anonmail.paths import Home
from anonmail.rng import SystemRng

log = logging.getLogger("anonmail.run")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run your node, mail agent and mail-client gateway until "
                                   "Ctrl-C",
                       description="Run the node, the user agent (checks for mail, sends what "
                                   "waits, republishes your address) and the SMTP/POP3/IMAP "
                                   "gateway on 127.0.0.1, until Ctrl-C or SIGTERM.")
    common.add_home_option(p)
    common.add_passphrase_option(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="the node's listen address (overrides "
                                                         "config.toml)")
    p.add_argument("--check-interval", type=float, metavar="SECONDS",
                   help="seconds between inbox checks, on average (default: config.toml "
                        "[agent] check_interval, else 300)")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log everything")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    home = common.home_of(args)
    home.check_control_path()
    refuse_if_running(home)
    cfg = common.load_config(home)
    listen = listen_endpoint(args, cfg, home)
    key = open_node_key(args, home)
    check_puzzle(key, cfg, home)
    identity = jobs.open_identity(args, home)
    password = auth.read_password(auth.ensure_password(home.root))
    interval = args.check_interval if args.check_interval is not None else cfg.check_interval
    if not 1 <= interval <= 86400:
        raise UserError("--check-interval must be seconds from 1 to 86400")
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    clock, rng = SystemClock(), SystemRng()
    node = Node(key, cfg.params, clock, rng, listen=listen, advertise=cfg.advertise,
                bootstrap=cfg.bootstrap, contacts_file=home.contacts, store_file=home.store,
                trusted_cas=cfg.trusted_cas)
    agent = AgentService(identity, jobs.agent_config(home), clock, rng, check_interval=interval)
    gateway = GatewayContext(identity.address, auth.LoginGuard(identity.address, password),
                             home.root / jobs.MAIL_DIR, agent.submit)
    run_until_stopped(node, home, listen,
                      lambda signals: _run_all(node, agent, gateway, cfg, home, signals))
    print("anonmail stopped", flush=True)
    return 0


async def _run_all(node: Node, agent: AgentService, gateway: GatewayContext, cfg: NodeConfig,
                   home: Home, signals: tuple[signal.Signals, ...]) -> OSError | None:
    with trio.CancelScope() as stop, trio.open_signal_receiver(*signals) as received:
        try:
            await node.bind()
        except OSError as e:
            return e
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, received, stop)
            await nursery.start(node.run)
            endpoints = await nursery.start(serve_gateway, cfg.gateway, gateway)
            extra = _Extra(agent, endpoints)
            await nursery.start(functools.partial(serve_control, extra=extra), node,
                                home.control, stop)
            await nursery.start(agent.run)
            where = ", ".join(f"{name} {ep}" for name, ep in endpoints.items()) or "off"
            print(f"anonmail running for {agent.identity.address}: node "
                  f"{node.node_id.hex()[:16]} on {node.endpoint}; gateway {where}; Ctrl-C "
                  "stops it", flush=True)
            for line in bootstrap_warnings(node):
                print(f"anonmail run: {line}", file=sys.stderr, flush=True)
    return None


class _Extra:
    """The agent's control operations (control.Extra)."""

    def __init__(self, agent: AgentService, endpoints: dict[str, str]) -> None:
        self.agent = agent
        self.endpoints = endpoints

    async def __call__(self, op: str, req: dict[str, Any]) -> dict[str, Any] | None:
        if op == "status":
            return {"agent": self.agent.describe(), "gateway": self.endpoints}
        if op != "job":
            return None
        name, params = req.get("name"), req.get("params")
        if not isinstance(name, str) or not isinstance(params, dict):
            raise UserError("a job needs a name and params")
        anonymous = params.get("anonymous", True) is not False
        try:
            out = await self.agent.run_job(lambda a: jobs.execute(a, name, params),
                                           anonymous=anonymous)
        except UserError:
            raise
        except BaseExceptionGroup as group:  # a session's nursery wraps what its tasks raise
            error = only_user_error(group)
            if error is not None:
                raise error from None
            if group.subgroup(Exception) is None:
                raise  # cancelled: we are stopping
            log.error("job %s failed: %s", name, type(group).__name__)
            raise UserError("the agent could not do it; see its log") from None
        except Exception as e:  # one job's bug must not stop the agent
            log.exception("job %s failed", name)
            raise UserError(f"the agent could not do it ({type(e).__name__}); see its log") \
                from None
        return {"out": out.out, "err": out.err}
