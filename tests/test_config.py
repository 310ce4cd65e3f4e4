"""config.toml (config.py): what each section yields, the one line each bad value gets, and the
anonymous-sender hold a home asks for (`[agent] anon_delay`: testnets only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from anonmail import config
from anonmail.anon.options import DEFAULT
from anonmail.commands import jobs
from anonmail.errors import UserError
from anonmail.paths import Home
from anonmail.records.params import MAINNET

TEST = '[network]\nname = "test"\n'
MAIN = '[node]\nlisten = "0.0.0.0:7600"\n'


def test_the_main_network_holds_for_the_measured_default() -> None:
    cfg = config.parse(MAIN)
    assert cfg.anon_delay == DEFAULT.delay_mean == 5.0
    assert cfg.check_interval == 300.0


def test_a_testnet_holds_briefly_unless_told() -> None:
    assert config.parse(TEST).anon_delay == config.TESTNET_ANON_DELAY == 0.5
    assert config.parse(TEST + "[agent]\nanon_delay = 5\n").anon_delay == 5.0
    assert config.parse(TEST + "[agent]\nanon_delay = 0\n").anon_delay == 0.0
    assert config.parse(TEST + "[agent]\nanon_delay = 60\n").anon_delay == 60.0


@pytest.mark.threat("T-ANON-DELAY-CONFIG")
@pytest.mark.parametrize("value", ["0", "0.5", "5", "60"])
def test_the_main_network_refuses_any_anon_delay(value: str) -> None:
    with pytest.raises(UserError, match=r"agent\.anon_delay is for test networks") as e:
        config.parse(MAIN + f"[agent]\nanon_delay = {value}\n", "config.toml")
    assert "\n" not in str(e.value) and "remove the line" in str(e.value)


@pytest.mark.parametrize("value", ["-1", "60.5", "nan", "inf", "true", '"5"', "[1]"])
def test_an_anon_delay_out_of_range_is_one_line(value: str) -> None:
    with pytest.raises(UserError, match=r"agent\.anon_delay must be seconds from 0 to 60$"):
        config.parse(TEST + f"[agent]\nanon_delay = {value}\n", "config.toml")


@pytest.mark.parametrize("value", ["9", "86401", "nan", "false", '"300"'])
def test_a_check_interval_out_of_range_is_one_line(value: str) -> None:
    with pytest.raises(UserError, match=r"agent\.check_interval must be seconds from 10 to"):
        config.parse(TEST + f"[agent]\ncheck_interval = {value}\n")


def test_unknown_agent_keys_are_named() -> None:
    with pytest.raises(UserError, match=r"\[agent\] takes check_interval and"):
        config.parse(TEST + "[agent]\ndelay_mean = 1\n")


@pytest.mark.threat("T-ANON-DELAY-CONFIG")
@pytest.mark.parametrize(("text", "delay"), [(TEST, 0.5), (TEST + "[agent]\nanon_delay = 2\n", 2.0),
                                            (MAIN, 5.0)])
def test_the_agent_asks_z_for_the_configured_hold(tmp_path: Path, text: str,
                                                  delay: float) -> None:
    (tmp_path / "config.toml").write_text(text)
    options = jobs.agent_config(Home(tmp_path)).options
    # the hold is the only defence a config changes; the rest is the default
    assert options == DEFAULT.replace(delay_mean=delay)


@given(st.text(max_size=300))
def test_any_text_is_a_config_or_one_line(text: str) -> None:
    try:
        config.parse(text)
    except UserError as e:
        assert "\n" not in str(e).strip()


_NUMBERS = st.one_of(st.integers(-5, 90_000), st.floats(-5, 100), st.floats(), st.booleans())


@given(st.sampled_from(["main", "test"]),
       st.dictionaries(st.sampled_from(["check_interval", "anon_delay"]), _NUMBERS))
@example("test", {"check_interval": 10, "anon_delay": 0})  # the bounds, both ends
@example("test", {"check_interval": 86400, "anon_delay": 60})
@example("test", {"check_interval": 9.999, "anon_delay": 60.001})
def test_agent_values_are_taken_exactly_when_in_range(network: str,
                                                      agent: dict[str, object]) -> None:
    def seconds(v: object, lo: float, hi: float) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi

    interval, delay = agent.get("check_interval", 300), agent.get("anon_delay")
    ok = seconds(interval, 10, 86400) and (
        delay is None or (network == "test" and seconds(delay, 0, 60)))
    text = f'[node]\nlisten = "0.0.0.0:7600"\n[network]\nname = "{network}"\n[agent]\n' + \
        "".join(f"{k} = {_toml(v)}\n" for k, v in agent.items())
    try:
        cfg = config.parse(text)
    except UserError as e:
        assert not ok and "\n" not in str(e)
        return
    assert ok and cfg.check_interval == interval
    assert cfg.anon_delay == (delay if delay is not None else
                              0.5 if network == "test" else DEFAULT.delay_mean)


_VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(), st.booleans(),
                    st.sampled_from(["test", "main"]), st.text(max_size=20),
                    st.lists(st.integers(), max_size=3))
_KEYS = st.sampled_from(["check_interval", "anon_delay", "listen", "smtp", "name", "bootstrap",
                         "puzzle_bits", "k", "x"])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return repr(value)


@given(st.dictionaries(st.sampled_from(["node", "network", "agent", "gateway"]),
                       st.dictionaries(_KEYS, _VALUES, max_size=4), max_size=4))
def test_any_keys_and_values_are_a_config_or_one_line(sections: dict[str, dict[str, object]]
                                                      ) -> None:
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in body.items())
                   for name, body in sections.items())
    try:
        cfg = config.parse(text)
    except UserError as e:
        assert "\n" not in str(e).strip()
        return
    assert 10 <= cfg.check_interval <= 86400
    assert 0 <= cfg.anon_delay <= config.MAX_ANON_DELAY
    if cfg.params.network_id == MAINNET.network_id:
        assert cfg.anon_delay == DEFAULT.delay_mean
