"""Encrypted frames: the record layer of a connection after the handshake. Sans-I/O.

A frame on the wire is

    length (4 bytes, big-endian) || XChaCha20-Poly1305(key, nonce = counter, plaintext, ad = length)

where `length` counts the ciphertext including its 16-byte tag and `counter` is the number of
frames sent before this one in this direction (0, 1, 2, ...; `crypto.counter_nonce`).

Invariants:
* one key per direction per connection (from the handshake), and the counter only goes up, so a
  nonce is never reused under a key;
* the receiver derives the nonce from its own count, never from the wire: a replayed, reordered,
  dropped-then-continued or reflected frame fails authentication (`DecryptError`), as does any
  change to the length, which is authenticated as associated data;
* a declared length above `max_frame` plaintext bytes (+ tag) is refused as soon as the 4 header
  bytes are in, before any of the body is buffered, so a peer cannot make us hold more than one
  maximum-size frame;
* after any failure the decoder stays failed: a connection with one bad frame is over.
"""

from __future__ import annotations

from anonmail import crypto
from anonmail.errors import DecryptError, LocalProtocolError, RemoteProtocolError

HEADER_SIZE = 4
TAG_SIZE = crypto.AEAD_TAG_SIZE
OVERHEAD = HEADER_SIZE + TAG_SIZE


class FrameTooLarge(RemoteProtocolError):
    """A frame header declared more bytes than this network allows."""


class _Direction:
    """One direction of one connection: its key, frame cap and message counter."""

    def __init__(self, key: bytes, max_frame: int) -> None:
        if len(key) != crypto.AEAD_KEY_SIZE:
            raise LocalProtocolError("a frame key is 32 bytes")
        self._key = key
        self.max_frame = max_frame
        self.counter = 0  # an unbounded int: counter_nonce has 192 bits, it never wraps


class FrameEncoder(_Direction):
    """Seals plaintexts into frames for one direction of one connection."""

    def encode(self, plaintext: bytes) -> bytes:
        if len(plaintext) > self.max_frame:
            raise LocalProtocolError(f"frame of {len(plaintext)} bytes exceeds {self.max_frame}")
        header = (len(plaintext) + TAG_SIZE).to_bytes(HEADER_SIZE, "big")
        body = crypto.aead_encrypt(self._key, crypto.counter_nonce(self.counter), plaintext, header)
        self.counter += 1
        return header + body


class FrameDecoder(_Direction):
    """Opens frames for one direction of one connection: feed bytes, take plaintexts."""

    def __init__(self, key: bytes, max_frame: int) -> None:
        super().__init__(key, max_frame)
        self._buf = bytearray()
        self.failed = False

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def ready(self) -> bool:
        """Whether a whole frame (or a header that `next_frame` refuses) is buffered."""
        buf = self._buf
        return len(buf) >= HEADER_SIZE and (
            len(buf) >= HEADER_SIZE + int.from_bytes(buf[:HEADER_SIZE], "big")
            or int.from_bytes(buf[:HEADER_SIZE], "big") > self.max_frame + TAG_SIZE)

    def next_frame(self) -> bytes | None:
        """The next plaintext, or None until more bytes arrive. Raises on a bad frame."""
        if self.failed:
            raise DecryptError("connection already failed")
        if len(self._buf) < HEADER_SIZE:
            return None
        header = bytes(self._buf[:HEADER_SIZE])
        n = int.from_bytes(header, "big")
        if n > self.max_frame + TAG_SIZE:
            self.failed = True
            raise FrameTooLarge(f"frame declares {n} bytes, more than allowed")
        if n < TAG_SIZE:
            self.failed = True
            raise DecryptError("frame shorter than its tag")
        if len(self._buf) < HEADER_SIZE + n:
            return None
        body = bytes(self._buf[HEADER_SIZE:HEADER_SIZE + n])
        del self._buf[:HEADER_SIZE + n]
        try:
            plain = crypto.aead_decrypt(self._key, crypto.counter_nonce(self.counter), body, header)
        except DecryptError:
            self.failed = True
            raise
        self.counter += 1
        return plain
