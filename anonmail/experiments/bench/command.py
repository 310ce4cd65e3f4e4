"""`anonmail bench rpc|mail|anon|pow|lookup|decode|flood`: the benchmarks from the command line
(rpc.py, mail_tcp.py, mail_sim.py, anon.py, pow.py, decode.py, flood.py).
`register(subparsers)` adds the `bench` group. Arguments are checked here, so a bad one is one
clear `UserError` line before anything runs; each measurement prints its own table.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from anonmail.errors import UserError
from anonmail.experiments.bench import anon, decode, flood, lookup, mail_sim, mail_tcp, pow, rpc


def _cmd_rpc(args: argparse.Namespace) -> int:
    if not args.seconds > 0:
        raise UserError("--seconds must be positive")
    if not 1 <= args.clients <= 1000:
        raise UserError("--clients must be between 1 and 1000")
    names = (sorted(rpc.RPC_TRANSPORTS, reverse=True) if args.transport == "both"
             else [args.transport])
    crypto_seconds = min(max(args.seconds / 5, 0.3), 2.0)
    size = rpc.frame_size()
    verify, aead = rpc.verify_rate(crypto_seconds), rpc.aead_rate(crypto_seconds, size)
    absorb = rpc.absorb_rate(crypto_seconds)
    for i, name in enumerate(names):
        runs = [trio.run(rpc.RPC_TRANSPORTS[name], args.seconds, args.clients, warm)
                for warm in (False, True)]
        print(("\n" if i else "") + rpc.report(runs, verify, aead, size, absorb))
    return 0


def _cmd_mail(args: argparse.Namespace) -> int:
    if not 1 <= args.messages <= 10_000 or not 100 <= args.size <= 50_000_000:
        raise UserError("--messages must be 1-10000 and --size 100-50000000 bytes")
    if not 10 <= args.sim_nodes <= 20_000:
        raise UserError("--sim-nodes must be 10-20000")
    if args.transport in ("tcp", "both"):
        result = trio.run(mail_tcp.bench_tcp, args.messages, args.size, args.nodes)
        print(mail_tcp.format_bench(result))
        if not args.no_baseline:
            _smtp_baseline(args.messages, result.size, result.per_second)
    if args.transport in ("sim", "both"):
        # the simulated half: honest nodes, every message encoded (mail_sim.py)
        for anonymous in (False, True) if args.anonymous else (False,):
            sim = mail_sim.bench_sim(nodes=args.sim_nodes, messages=args.messages,
                                     size=args.size, anonymous=anonymous,
                                     look_ahead=not args.no_look_ahead)
            print(mail_sim.format_bench(sim))
    return 0


def _smtp_baseline(messages: int, size: int, anonmail_per_second: float) -> None:
    """The same workload through aiosmtpd -> Maildir (smtp_baseline.py), and the ratio."""
    from anonmail.experiments.bench import smtp_baseline

    if not smtp_baseline.available():
        print(smtp_baseline.MISSING)
        return
    baseline = smtp_baseline.bench_smtp(messages, size)  # anonmail's size as sent, exactly
    print(smtp_baseline.format_smtp(baseline))
    print(smtp_baseline.format_ratio(anonmail_per_second, baseline))


def _cmd_anon(args: argparse.Namespace) -> int:
    if not 1 <= args.messages <= 1000 or not 100 <= args.size <= 5_000_000:
        raise UserError("--messages must be 1-1000 and --size 100-5000000 bytes")
    if not 3 <= args.nodes <= 32:
        raise UserError("--nodes must be 3-32")
    if args.transport in ("sim", "both"):
        print(anon.bench_anon_sim(args.messages, args.size))
    if args.transport in ("tcp", "both"):
        print(anon.bench_anon_tcp(args.messages, args.size, args.nodes))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    text, ok = decode.report(decode.measure())
    print(text)
    return 0 if ok else 1


def _cmd_flood(args: argparse.Namespace) -> int:
    if not 1 <= args.seconds <= flood.MAX_SECONDS:
        raise UserError(f"--seconds must be 1-{flood.MAX_SECONDS:g}")
    runs = [flood.run(args.seconds, defended=True)]
    if not args.no_baseline:
        runs.append(flood.run(args.seconds, defended=False))
    print(flood.report(runs))
    return 0 if runs[0].ratio <= flood.LIMIT else 1


def register(subparsers: Any) -> None:
    """Add `anonmail bench` and its subcommands to the command line."""
    bench = subparsers.add_parser("bench", help="measure this machine's throughput")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    rpc_p = sub.add_parser("rpc", help="requests/second over loopback, beside the crypto bound")
    rpc_p.add_argument("--seconds", type=float, default=5.0, help="how long to drive (default 5)")
    rpc_p.add_argument("--clients", type=int, default=8,
                       help="concurrent client connections (default 8)")
    rpc_p.add_argument("--transport", choices=[*sorted(rpc.RPC_TRANSPORTS), "both"],
                       default="both", help="which network to measure over (default both)")
    rpc_p.set_defaults(func=_cmd_rpc)
    mail_p = sub.add_parser("mail", help="deliveries/second and wire bytes per delivered mail")
    mail_p.add_argument("--messages", type=int, default=20, help="messages to send (default 20)")
    mail_p.add_argument("--size", type=int, default=20_000,
                        help="bytes per message (default 20000)")
    mail_p.add_argument("--nodes", type=int, default=5, help="loopback nodes (default 5)")
    mail_p.add_argument("--transport", choices=["tcp", "sim", "both"], default="both",
                        help="loopback TCP, the simulated network, or both (default)")
    mail_p.add_argument("--no-baseline", action="store_true",
                        help="skip the SMTP baseline (aiosmtpd into a Maildir) beside TCP")
    mail_p.add_argument("--sim-nodes", type=int, default=200,
                        help="simulated nodes (default 200)")
    mail_p.add_argument("--anonymous", action="store_true",
                        help="simulated: also send through go-betweens, beside direct")
    mail_p.add_argument("--no-look-ahead", action="store_true",
                        help="simulated: look a send's keys up one after the other, as before "
                             "issue 11 (compare the send latency)")
    mail_p.set_defaults(func=_cmd_mail)
    anon_p = sub.add_parser("anon", help="the price of anonymity: anonymous vs direct mail")
    anon_p.add_argument("--messages", type=int, default=20, help="messages (default 20)")
    anon_p.add_argument("--size", type=int, default=20_000, help="bytes per message (default "
                                                                  "20000)")
    anon_p.add_argument("--nodes", type=int, default=7, help="loopback nodes (default 7)")
    anon_p.add_argument("--transport", choices=["tcp", "sim", "both"], default="both",
                        help="the simulated network, loopback TCP, or both (default)")
    anon_p.set_defaults(func=_cmd_anon)
    pow.add_parser(sub)
    lookup.add_parser(sub)  # lookup.py
    decode_p = sub.add_parser("decode", help="decode CPU per byte: hostile requests vs honest "
                                             "(exit 1 beyond 10x)")
    decode_p.set_defaults(func=_cmd_decode)
    flood_p = sub.add_parser("flood", help="honest FIND_NODE latency under a Hello flood from "
                                           "one source, defended vs undefended (exit 1 beyond 3x)")
    flood_p.add_argument("--seconds", type=float, default=8.0,
                         help="seconds unloaded, then as many flooded, per run (default 8)")
    flood_p.add_argument("--no-baseline", action="store_true",
                         help="skip the undefended baseline run")
    flood_p.set_defaults(func=_cmd_flood)
