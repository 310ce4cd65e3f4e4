"""Running the linkage experiment (model.py): for each hostile fraction f and each row of
`variants`, one network (network.py), a calibration run, the main run and the histories.

* calibration: `config.calibration` sends (more while abandoned attempts are rare; four times
  as many with batching) whose time differences (every attempt, a random inbox replica,
  whoever is hostile) become the adversary's densities (adversary.py);
* main run: `config.messages` sends at Poisson times of rate `config.load`, each from a uniformly
  chosen sender (a fresh guard at its first send) to one of its contacts; every send's evidence
  goes into the coalition's log, then each delivery the coalition saw is scored against it.
  The measured messages are the whole anonymous load, so the timing overlap is realistic;
* histories: each of `history_senders` senders (fresh state) sends `history` messages at Poisson
  times over `history_days` (guards age and are replaced as in the protocol); a message that
  could be linked is timed at a uniformly random moment of the main run and scored against the
  main run's log plus its own events. Messages of one history share the guard and the contacts'
  inbox replicas, so they are not independent; the background they meet is.

The arrival times and senders of the main run, and the senders' first guards, come from
streams of their own, so every row of one f sees the same workload, network and first guards
(common random numbers).

Invariants: a row is a function of (config, f, row index) alone -- so `run` gives the same
report for any `jobs`; the only clock read is none (progress timing is the command's).
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
from collections.abc import Callable

from anonmail.anon.options import AnonOptions
from anonmail.experiments.anonymity.adversary import (
    ABANDONED,
    AT_REPLICA,
    AT_Z,
    KINDS,
    Adversary,
    Samples,
    Sighting,
    calibration_samples,
    evidence,
    might_link,
    rule_a,
)
from anonmail.experiments.anonymity.model import (
    AnonConfig,
    AnonymityReport,
    FractionResult,
    Row,
    predicted_a,
    variants,
)
from anonmail.experiments.anonymity.network import Network
from anonmail.experiments.anonymity.protocol import Protocol, Sender
from anonmail.rng import SeededRng

Progress = Callable[[str], None]

_networks: dict[tuple[object, ...], Network] = {}


def network_for(config: AnonConfig, f: float) -> Network:
    """The network of (config, f), built once per process."""
    key = (config.nodes, config.senders, config.contacts, config.replication, config.latency,
           config.seed, f)
    if key not in _networks:
        if len(_networks) > 4:
            _networks.clear()
        _networks[key] = Network(config.nodes, f, config.senders, config.contacts,
                                 config.replication, config.latency,
                                 SeededRng(config.seed).fork("network"))
    return _networks[key]


def exponential(rng: SeededRng, mean: float) -> float:
    return -mean * math.log(1.0 - rng.random())


def fresh_senders(net: Network) -> list[Sender]:
    return [Sender(s, net.contacts[s]) for s in net.senders]


def size_priors(proto: Protocol, header: tuple[int, int]) -> dict[int, float]:
    """P(a random header has size key k), for every k."""
    n = header[1] - header[0] + 1
    out: dict[int, float] = {}
    for b in range(header[0], header[1] + 1):
        k = proto.size_key(b)
        out[k] = out.get(k, 0.0) + 1.0 / n
    return out


def calibrate(config: AnonConfig, net: Network, proto: Protocol) -> Samples:
    """What the adversary learns of the protocol's timing: `config.calibration` sends (four
    times as many with batching, whose tick model is split by phase), and more, up to four
    times that, while abandoned attempts (rare: a retry) have fewer than `config.calibration`
    // 2 samples."""
    rng = proto.rng
    senders = fresh_senders(net)
    samples: Samples = {(k, o): [] for k in KINDS for o in (AT_Z, AT_REPLICA)}
    t = 0.0
    count = config.calibration * (4 if proto.o.batch_interval > 0 else 1)
    rare = samples[ABANDONED, AT_Z]
    for i in range(4 * count):
        if i >= count and len(rare) >= config.calibration // 2:
            break
        t += exponential(rng, 1.0 / config.load)
        s = senders[rng.randbelow(len(senders))]
        p = proto.path(s, t)
        tm = proto.timing(p, t)
        replicas = net.inbox[p.recipient]
        calibration_samples(proto, p, tm, replicas[rng.randbelow(len(replicas))], samples)
    return samples


def run_row(config: AnonConfig, f: float, index: int) -> Row:
    """One row: calibration, main run, histories."""
    variant = variants(config)[index]
    net = network_for(config, f)
    root = SeededRng(config.seed).fork(f"f={f!r}")
    cal = Protocol(net, variant.options, config, root.fork("calibration"))
    samples = calibrate(config, net, cal)

    load = root.fork("load")
    proto = Protocol(net, variant.options, config, root.fork("main"), root.fork("guards"))
    senders = fresh_senders(net)
    log: list[Sighting] = []
    sent = []
    t = latency = 0.0
    tries = unseen = 0
    for _ in range(config.messages):
        t += exponential(load, 1.0 / config.load)
        s = senders[load.randbelow(len(senders))]
        p = proto.path(s, t)
        tm = proto.timing(p, t)
        ev = evidence(proto, p, tm)
        if ev.sighting is not None:
            log.append(ev.sighting)
        unseen += ev.sighting is None
        sent.append((p.sender, ev))
        latency += tm.delivery - t
        tries += len(p.z_tries) + len(p.w_tries)
    span = t
    m = max(1, config.messages)
    adversary = Adversary(net, samples, variant.options.batch_interval, config.latency[1], log,
                          config.load * unseen / m, size_priors(proto, config.header),
                          len(net.senders), config.threshold)
    linked_a = linked_b = wrong = observed = 0
    degree = 0.0
    for sender, ev in sent:
        if ev.observation is None:
            degree += 1.0
            continue
        observed += 1
        if ev.certain:
            linked_a += ev.by_a
            linked_b += 1
            continue
        verdict = adversary.score(ev.observation, sender)
        linked_b += verdict.linked
        wrong += verdict.wrong
        degree += verdict.degree

    hist_a, hist_b, histories = run_histories(config, net, variant.options, root, adversary, span)
    return Row(variant.label, variant.options, config.messages, linked_a, linked_b, wrong,
               observed, degree / m, latency / m, histories, hist_a, hist_b,
               tries / (2 * m),
               predicted_a(net.coalition_share, variant.options, config.strategy,
                           config.disrupt))


def run_histories(config: AnonConfig, net: Network, options: AnonOptions, root: SeededRng,
                  adversary: Adversary, span: float) -> tuple[int, int, int]:
    """(histories with >= 1 link by (a), by (b), histories)."""
    rng = root.fork("history")
    proto = Protocol(net, options, config, rng, root.fork("history guards"))
    gap = config.history_days * 86400.0 / max(1, config.history)
    senders = fresh_senders(net)[:config.history_senders]
    any_a = any_b = 0
    for s in senders:
        th = 0.0
        got_a = got_b = False
        for _ in range(config.history):
            th += exponential(rng, gap)
            p = proto.path(s, th)  # every message: the guard's state goes on
            if rule_a(proto, p):
                got_a = got_b = True
            if got_b or not might_link(proto, p):
                continue
            tau = span * (0.1 + 0.8 * rng.random())
            ev = evidence(proto, p, proto.timing(p, tau))
            if ev.observation is not None and (
                    ev.certain or adversary.score(ev.observation, s.node, ev.sighting).linked):
                got_b = True
        any_a += got_a
        any_b += got_b
    return any_a, any_b, len(senders)


def run(config: AnonConfig, jobs: int = 1, progress: Progress | None = None) -> AnonymityReport:
    """Every (f, row) of `config`, over `jobs` processes."""
    return run_many([config], jobs, progress)[0]


def run_many(configs: list[AnonConfig], jobs: int = 1,
             progress: Progress | None = None) -> list[AnonymityReport]:
    """Every (config, f, row), over `jobs` processes; the reports do not depend on `jobs`."""
    say = progress if progress is not None else (lambda _: None)
    tasks = [(c, f, i) for c, config in enumerate(configs) for f in config.fractions
             for i in range(len(variants(config)))]
    results: dict[tuple[int, float, int], Row] = {}

    def done(task: tuple[int, float, int], row: Row) -> None:
        results[task] = row
        say(f"{configs[task[0]].strategy} f={task[1]:g} {row.label}: (a) {100 * row.rate_a:.2f}% "
            f"(b) {100 * row.rate_b:.2f}%")

    if jobs <= 1:
        for c, f, i in tasks:
            done((c, f, i), run_row(configs[c], f, i))
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {(c, f, i): pool.submit(run_row, configs[c], f, i) for c, f, i in tasks}
            for task, future in futures.items():
                done(task, future.result())
    reports = []
    for c, config in enumerate(configs):
        out = []
        for f in config.fractions:
            net = network_for(config, f)
            rows = tuple(results[c, f, i] for i in range(len(variants(config))))
            out.append(FractionResult(f, net.hostile_count, net.coalition_share, rows))
        reports.append(AnonymityReport(config, tuple(out)))
    return reports
