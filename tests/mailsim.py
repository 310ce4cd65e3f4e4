"""The mail simulation for tests/test_mail_flow*.py: the mail user agent end to end on
sim/network.py and the storage service.

The `sim` fixture is 300 nodes (tests/storegrid.py: oracle-filled tables, every message encoded
and decoded), each with a StoreService on an in-memory SQLite database that trusts one CA, under
trio's MockClock with autojump. Agents run on simulated nodes with their local Maildir in
tmp_path; `people` gives each a published certificate (`bob` CA-issued, the others .anon);
`one_line` checks that an error reads as one line. Each test takes `autojump_clock` itself
(pytest-trio picks the clock from the test's own arguments only). A test module uses
the fixture by importing it: `from mailsim import sim_fixture as sim_fixture`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from storegrid import R, StoreGrid, serving_grid

from anonmail import crypto
from anonmail.mail.identity import AddressIdentity, new_keys
from anonmail.mail.permits import introduce
from anonmail.mail.user_agent import MailAgent
from anonmail.records import ids
from anonmail.records.certs import CertificateAuthority
from anonmail.rng import SeededRng

N = 300
DAY = 86400
CA = CertificateAuthority(crypto.SigningKey(b"\x5c" * 32))
TRUSTED = frozenset({CA.public})
TIMEOUT = 5 * DAY  # virtual seconds: a deadlock jumps here and fails


@dataclass
class Sim(StoreGrid):
    tmp: Path

    def entries(self, address: str) -> int:
        inbox = ids.inbox_key(address)
        now = self.s.clock.now()
        return sum(svc.db.inbox_usage(inbox, now)[0] for svc in self.svc.values())

    def objects(self) -> int:
        return sum(svc.db.count_objects() for svc in self.svc.values())

    def agent(self, i: int, identity: AddressIdentity, name: str,
              trusted: frozenset[bytes] = TRUSTED) -> MailAgent:
        x = self.node(i)
        return MailAgent(identity, x.net, x.dht, self.tmp / name, self.s.params, self.s.clock,
                         self.s.rng.fork(f"agent-{name}"), trusted_cas=trusted)


@pytest.fixture(name="sim")
async def sim_fixture(tmp_path: Path) -> AsyncIterator[Sim]:
    async with serving_grid(N, 11, TRUSTED) as (s, svc):
        yield Sim(s, svc, tmp_path)


def anon(name: str, now: float) -> AddressIdentity:
    return AddressIdentity.create_anon(name, SeededRng(b"id-" + name.encode()), now)


def ca_issued(name: str, now: float) -> AddressIdentity:
    sign, seal = new_keys(SeededRng(b"id-" + name.encode()))
    return AddressIdentity.from_ca(sign, seal, CA.issue(f"{name}@example.org", sign.public,
                                                        seal.public, now))


async def people(sim: Sim, *names: str) -> list[MailAgent]:
    """Agents on nodes 0, 1, 2, ...; `alice`-like names are .anon, `bob` is CA-issued. Each
    publishes its certificate."""
    return await people_in(sim, R, *names)


async def people_in(sim: Sim, replicas: int, *names: str) -> list[MailAgent]:
    now = sim.s.clock.now()
    out = []
    for i, name in enumerate(names):
        ident = ca_issued(name, now) if name == "bob" else anon(name, now)
        agent = sim.agent(i, ident, name)
        assert len(await agent.publish_cert()) == replicas
        out.append(agent)
    # Mail tests are about mail: everyone starts as everyone's contact (as after RTS/CTS;
    # tests/test_permit_flow.py is about asking).
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            introduce(a.permits, b.permits)
    return out


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text
    return text
