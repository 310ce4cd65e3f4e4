"""The encrypted frame codec: round trips, and every way a frame can be wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonmail.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from anonmail.net.frames import (
    HEADER_SIZE,
    OVERHEAD,
    TAG_SIZE,
    FrameDecoder,
    FrameEncoder,
    FrameTooLarge,
)
from anonmail.rng import SeededRng

MAX = 4096
KEY = SeededRng(1).bytes(32)
OTHER_KEY = SeededRng(2).bytes(32)


def pair(max_frame: int = MAX) -> tuple[FrameEncoder, FrameDecoder]:
    return FrameEncoder(KEY, max_frame), FrameDecoder(KEY, max_frame)


def decode_all(dec: FrameDecoder, data: bytes) -> list[bytes]:
    dec.receive_data(data)
    out = []
    while (plain := dec.next_frame()) is not None:
        out.append(plain)
    return out


def test_round_trip_several_frames_in_one_chunk() -> None:
    enc, dec = pair()
    msgs = [b"", b"a", b"hello" * 100, bytes(MAX)]
    wire = b"".join(enc.encode(m) for m in msgs)
    assert decode_all(dec, wire) == msgs
    assert enc.counter == dec.counter == len(msgs)


def test_byte_at_a_time() -> None:
    enc, dec = pair()
    frame = enc.encode(b"slowly")
    got = []
    for i in range(len(frame)):
        got += decode_all(dec, frame[i:i + 1])
    assert got == [b"slowly"]


def test_frame_layout() -> None:
    enc, _ = pair()
    frame = enc.encode(b"xyz")
    assert len(frame) == 3 + OVERHEAD
    assert int.from_bytes(frame[:HEADER_SIZE], "big") == 3 + TAG_SIZE


def test_encoder_refuses_oversized_plaintext() -> None:
    enc, _ = pair()
    with pytest.raises(LocalProtocolError):
        enc.encode(bytes(MAX + 1))
    assert enc.counter == 0  # nothing was consumed


@pytest.mark.threat("T-MALFORMED")
def test_oversized_declared_length_fails_on_the_header_alone() -> None:
    _, dec = pair()
    dec.receive_data((MAX + TAG_SIZE + 1).to_bytes(4, "big"))  # no body at all
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    assert isinstance(FrameTooLarge("x"), RemoteProtocolError)


@pytest.mark.threat("T-MALFORMED")
def test_declared_length_shorter_than_tag() -> None:
    _, dec = pair()
    dec.receive_data((TAG_SIZE - 1).to_bytes(4, "big") + bytes(TAG_SIZE))
    with pytest.raises(DecryptError):
        dec.next_frame()


@pytest.mark.threat("T-MALFORMED")
def test_replayed_frame_fails() -> None:
    enc, dec = pair()
    frame = enc.encode(b"once")
    assert decode_all(dec, frame) == [b"once"]
    with pytest.raises(DecryptError):
        decode_all(dec, frame)


@pytest.mark.threat("T-MALFORMED")
def test_reordered_frames_fail() -> None:
    enc, dec = pair()
    first, second = enc.encode(b"1"), enc.encode(b"2")
    with pytest.raises(DecryptError):
        decode_all(dec, second + first)


@pytest.mark.threat("T-MALFORMED")
def test_dropped_frame_fails() -> None:
    enc, dec = pair()
    enc.encode(b"lost")
    with pytest.raises(DecryptError):
        decode_all(dec, enc.encode(b"after"))


@pytest.mark.threat("T-MALFORMED")
def test_frame_under_another_key_fails() -> None:
    # E.g. reflected back to its sender, who decodes with the other direction's key.
    frame = FrameEncoder(OTHER_KEY, MAX).encode(b"x")
    with pytest.raises(DecryptError):
        decode_all(pair()[1], frame)


def test_decoder_stays_failed() -> None:
    enc, dec = pair()
    good = enc.encode(b"ok")
    bad = bytearray(enc.encode(b"bad"))
    bad[-1] ^= 1
    with pytest.raises(DecryptError):
        decode_all(dec, bytes(bad))
    dec.receive_data(good)
    with pytest.raises(DecryptError):
        dec.next_frame()


@given(payloads=st.lists(st.binary(max_size=600), max_size=6), cut=st.integers(1, 97))
def test_round_trip_property(payloads: list[bytes], cut: int) -> None:
    enc, dec = pair(1024)
    stream = b"".join(enc.encode(p) for p in payloads)
    got = []
    for i in range(0, len(stream), cut):  # arbitrary TCP segmentation
        got += decode_all(dec, stream[i:i + cut])
    assert got == payloads


@pytest.mark.threat("T-MALFORMED")
@given(payload=st.binary(max_size=300), data=st.data())
def test_any_flipped_byte_fails(payload: bytes, data: st.DataObject) -> None:
    enc, dec = pair(1024)
    frame = bytearray(enc.encode(payload))
    i = data.draw(st.integers(0, len(frame) - 1), label="index")
    frame[i] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(RemoteProtocolError):
        got = decode_all(dec, bytes(frame))
        # A header that now declares more bytes than arrived leaves the frame incomplete;
        # the connection would time out or fail on the next bytes, never yield plaintext.
        assert got == []
        dec.receive_data(bytes(2048))
        dec.next_frame()
