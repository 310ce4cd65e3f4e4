"""`anonmail bench anon`: the price of anonymity (issue 8 must-show 4). The same mail workload
sent directly and anonymously (through go-betweens, default AnonOptions), side by side in one
run: on the simulated network (latency model: 10-150 ms per link; virtual seconds per send,
bytes and messages on the wire per delivered mail, every message encoded) and over loopback TCP
(real seconds per delivered mail, bytes every socket sent). Each figure is printed with the ratio
anonymous / direct.

Invariants: both halves of a pair run the same workload with the same seed (simulated) or the
same sizes (TCP); a delivery counts only when the retrieved bytes equal the bytes sent.
"""

from __future__ import annotations

import functools

import trio

from anonmail.experiments.bench import mail_sim, mail_tcp
from anonmail.experiments.mail.report import human_size


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def bench_anon_sim(messages: int, size: int, nodes: int = 200) -> str:
    direct = mail_sim.bench_sim(nodes=nodes, messages=messages, size=size, agents=10)
    anon = mail_sim.bench_sim(nodes=nodes, messages=messages, size=size, agents=10,
                              anonymous=True)
    rows = [
        ("delivered", f"{direct.delivered}/{messages}", f"{anon.delivered}/{messages}", ""),
        ("send latency (virtual s)", f"{direct.send_latency:.2f}", f"{anon.send_latency:.2f}",
         _ratio(anon.send_latency, direct.send_latency)),
        ("bytes on the wire / delivered", human_size(direct.bytes_per_delivered),
         human_size(anon.bytes_per_delivered),
         _ratio(anon.bytes_per_delivered, direct.bytes_per_delivered)),
        ("messages on the wire / delivered",
         f"{direct.wire_messages / max(direct.delivered, 1):.0f}",
         f"{anon.wire_messages / max(anon.delivered, 1):.0f}",
         _ratio(anon.wire_messages / max(anon.delivered, 1),
                direct.wire_messages / max(direct.delivered, 1))),
        ("wall seconds (simulator CPU)", f"{direct.wall_seconds:.1f}",
         f"{anon.wall_seconds:.1f}", _ratio(anon.wall_seconds, direct.wall_seconds)),
    ]
    head = (f"simulated: {nodes} honest nodes, latency 10-150 ms per link, {messages} messages "
            f"of {human_size(direct.mean_size)}, r=8, every message encoded")
    return _table(head, rows)


def bench_anon_tcp(messages: int, size: int, nodes: int = 7) -> str:
    direct = trio.run(functools.partial(mail_tcp.bench_tcp, messages, size, nodes))
    anon = trio.run(functools.partial(mail_tcp.bench_tcp, messages, size, nodes,
                                      anonymous=True))

    def per(b: mail_tcp.MailBench) -> float:
        return b.seconds / max(b.delivered, 1)

    rows = [
        ("delivered", f"{direct.delivered}/{messages}", f"{anon.delivered}/{messages}", ""),
        ("seconds / delivered mail", f"{per(direct):.3f}", f"{per(anon):.3f}",
         _ratio(per(anon), per(direct))),
        ("bytes on the wire / delivered", human_size(direct.bytes_per_delivered),
         human_size(anon.bytes_per_delivered),
         _ratio(anon.bytes_per_delivered, direct.bytes_per_delivered)),
        ("x the floor (size x r)",
         f"{direct.bytes_per_delivered / max(direct.floor, 1):.2f}",
         f"{anon.bytes_per_delivered / max(anon.floor, 1):.2f}", ""),
    ]
    head = (f"loopback TCP: {nodes} nodes, r = {direct.replication}, {messages} messages of "
            f"{direct.size:,} bytes (send + check + retrieve + delete)")
    return _table(head, rows)


def _table(head: str, rows: list[tuple[str, str, str, str]]) -> str:
    out = [head, f"  {'':34}{'direct':>12}{'anonymous':>12}{'ratio':>8}"]
    out += [f"  {a:34}{b:>12}{c:>12}{d:>8}" for a, b, c, d in rows]
    return "\n".join(out)
