"""`anonmail demo`: the mission on a local network of real nodes: a spammer's append is refused
(no permit); Alice asks Bob and Carol for permission to write, they allow her, her photo goes out
by itself anonymously, both read it, and every node's view of it is shown.

Part 1 (run.py) runs real nodes over loopback TCP inside this process and three user agents,
each a DHT client whose every storage request goes through go-betweens (DESIGN.md §7). Alice
sends one mail with a fragmented attachment to Bob and Carol; they check and read it. Then
report.py prints, per role (Alice's guard X, the cross-checking Y, the anonymizers Z and W, the
storage and inbox nodes), what each node saw (ids, sizes, times; never content) and what it could
not see, and a verdict computed from every node's records: which nodes ever saw each agent's
node id. Part 2 runs the same node code on a simulated network of thousands of nodes in virtual
time, with colluding hostile nodes, and shows what disjoint lookup paths buy
(experiments/lookup/).

It reads the real clock and the OS RNG (part 1 is a real network); part 2 is reproducible from
`--seed`. The first paragraph of this docstring is printed as the demo's opening line, so keep
its "`anonmail demo`: " prefix.
"""

from __future__ import annotations

import argparse
import time

import trio

from anonmail.anon.options import DEFAULT
from anonmail.errors import UserError
from anonmail.experiments import sim_command
from anonmail.experiments.demo.report import read_views, send_views, verdicts
from anonmail.experiments.demo.run import STEP_TIMEOUT, MailConfig, run_mail
from anonmail.experiments.lookup.model import ExperimentConfig
from anonmail.experiments.lookup.report import format_report
from anonmail.experiments.lookup.run import run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run a local network: an anonymous mail end to end, and "
                                    "what every node saw of it")
    p.add_argument("--nodes", type=int, default=12, help="real TCP nodes (default 12, 6-64)")
    p.add_argument("--attachment-kb", type=int, default=800,
                   help="size of Alice's photo in kB (default 800: over ~720 the body is "
                        "stored as fragments)")
    p.add_argument("--delay", type=float, default=0.1,
                   help="Z's mean random hold before storing, seconds (default 0.1 for a "
                        f"quick demo; the main network's is {DEFAULT.delay_mean:g})")
    p.add_argument("--sim-nodes", type=int, default=2000,
                   help="simulated nodes in part 2 (default 2000; 0 skips part 2)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (part 2)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    opening = " ".join(__doc__.split("\n\n")[0].split(": ", 1)[1].split())
    print(opening[0].upper() + opening[1:])
    config = MailConfig(nodes=max(6, min(args.nodes, 64)),
                        attachment=max(1, args.attachment_kb) * 1000,
                        delay_mean=max(0.0, args.delay))
    print(f"\n== Part 1: {config.nodes} nodes over TCP on 127.0.0.1, three anonymous agents ==")
    print(f"(Z holds each Store and Append for a random time, Exp(mean {config.delay_mean:g} "
          f"s) here to keep the demo quick; the main network's mean is {DEFAULT.delay_mean:g} "
          "s)")
    try:
        mail = trio.run(run_mail, config, print)
    except trio.TooSlowError:
        raise UserError(f"a step of the demo took over {STEP_TIMEOUT:g} s: the local network "
                        "is stuck (is this machine heavily loaded?)") from None
    for line in (*send_views(mail), *read_views(mail), *verdicts(mail)):
        print(line)
    if args.sim_nodes > 0:
        _sim_part(max(200, args.sim_nodes), args.seed)
    sims = [m.__name__.split(".")[-2] for m in sim_command.EXPERIMENTS]
    print("\nMeasured at scale: " + ", ".join(f"`anonmail sim {s}`" for s in sims) + ".")
    return 0


def _sim_part(n: int, seed: int) -> None:
    print(f"\n== Part 2: the same node code, {n} simulated nodes, virtual time ==")
    # alpha = 1 (one request in flight per path) makes plain Kademlia's weakness visible at this
    # size; `anonmail sim lookup` runs the full table.
    config = ExperimentConfig(nodes=n, lookups=200, k=16, alpha=1, hostile=(0.0, 0.3),
                              paths=(1, 8), seed=seed)
    t0 = time.perf_counter()
    report = run(config)
    print(format_report(report))
    cell1, cell8 = report.cell(0.3, 1), report.cell(0.3, 8)
    lookups = config.lookups * len(config.hostile) * len(config.paths)
    print(f"with 30% of nodes colluding and lying in every FIND_NODE answer, a lookup finds the "
          f"true closest honest node {cell1.success_rate:.1%} of the time over one path (plain "
          f"Kademlia) and {cell8.success_rate:.1%} over 8 disjoint paths (S/Kademlia)\n"
          f"({time.perf_counter() - t0:.1f} s of CPU for {lookups} lookups in virtual time)")
