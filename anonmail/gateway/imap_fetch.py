"""FETCH for the IMAP gateway: the fetch attributes a client asks for, a message's MIME tree with
exact byte ranges, and the ENVELOPE, BODY, BODYSTRUCTURE and BODY[section]<partial> responses
(RFC 3501 §6.4.5, §7.4.2, §9).

Invariants:
* a message is served with CRLF line ends (bare LF becomes CRLF; RFC 3501 §2.3.3, §4.3); every
  size, section and partial range refers to those bytes, so BODY[] is the file byte for byte
  when it already used CRLF;
* section contents are slices of the message, never re-serialized: the MIME tree records where
  each part's header and body lie (multipart bodies split on boundary lines, RFC 2046 §5.1.1);
  headers are read with the stdlib `email` package (Content-Type/Disposition parameters,
  address lists);
* work is bounded: at most MAX_PARTS parts and MAX_NEST levels per message, the rest is served as
  opaque leaves; every step is a linear scan of the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value, getaddresses

from anonmail.gateway.imap_parse import Value

MAX_PARTS = 500
MAX_NEST = 20
_EOL = re.compile(rb"\r?\n")
_SECTION = re.compile(
    r"(BODY(?:\.PEEK)?)\[((?:\d{1,6}\.){0,50}\d{1,6})?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?"
    r"(?: ?\(([^()]*)\))?\](?:<(\d{1,10})\.(\d{1,10})>)?", re.I)
_SIMPLE = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE",
           "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
MACROS = {"ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
          "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
          "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]}


def crlf(data: bytes) -> bytes:
    return data if b"\n" not in data.replace(b"\r\n", b"") else _EOL.sub(b"\r\n", data)


# -- strings in responses (RFC 3501 §4.3, §4.5) --------------------------------------------------


def nstring(v: bytes | str | None) -> bytes:
    if v is None:
        return b"NIL"
    b = v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
    if len(b) < 1024 and all(0x20 <= c < 0x7F for c in b):
        return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(b) + b


def plist(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")" if items else b"NIL"


# -- the MIME tree ----------------------------------------------------------------------------


@dataclass
class Part:
    header: bytes  # with the blank line that ends it
    body: bytes
    fields: list[tuple[str, str]]  # (name, unfolded raw value as latin-1 text)
    ctype: Message = field(default_factory=Message)
    children: list[Part] = field(default_factory=list)  # multipart only
    inner: Part | None = None  # message/rfc822 only

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.fields if k.lower() == name), None)

    @property
    def multipart(self) -> bool:
        return bool(self.children)


def parse(data: bytes) -> Part:
    return _parse(data, 0, [MAX_PARTS], "text/plain")


def _parse(data: bytes, depth: int, budget: list[int], default: str) -> Part:
    budget[0] -= 1
    if data.startswith(b"\r\n"):
        cut = 2
    else:
        idx = data.find(b"\r\n\r\n")
        cut = len(data) if idx < 0 else idx + 4
    header, body = data[:cut], data[cut:]
    fields: list[tuple[str, str]] = []
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip().decode("latin-1"))
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    part = Part(header, body, fields)
    part.ctype["Content-Type"] = part.get("Content-Type") or default
    if part.ctype.get_content_maintype() == "text" and part.get("Content-Type") is None:
        part.ctype.set_param("charset", "us-ascii")
    if depth >= MAX_NEST or budget[0] <= 0:
        return part
    ctype = part.ctype.get_content_type()
    boundary = part.ctype.get_param("boundary")
    if part.ctype.get_content_maintype() == "multipart" and isinstance(boundary, str) and boundary:
        sub_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        for chunk in _split(body, boundary.encode("latin-1")):
            if budget[0] <= 0:
                break
            part.children.append(_parse(chunk, depth + 1, budget, sub_default))
    elif ctype == "message/rfc822":
        part.inner = _parse(body, depth + 1, budget, "text/plain")
    return part


def _split(body: bytes, boundary: bytes) -> list[bytes]:
    """Body parts between the delimiter lines "--boundary" (the CRLF before a delimiter belongs
    to it), up to the close delimiter "--boundary--"; preamble and epilogue are dropped."""
    delim = re.compile(rb"(?:\A|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r\n|\Z)")
    out: list[bytes] = []
    start = -1
    for m in delim.finditer(body):
        if start >= 0:
            out.append(body[start : max(start, m.start())])
        if m.group(1):
            return out
        start = m.end() + 2
    if start >= 0:
        out.append(body[start:])  # no close delimiter: the rest is the last part
    return out


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


# -- ENVELOPE, BODY, BODYSTRUCTURE ---------------------------------------------------------------


def _addresses(value: str | None) -> bytes:
    if value is None:
        return b"NIL"
    out = []
    for name, addr in getaddresses([value]):
        if not addr:
            continue
        mailbox, at, host = addr.rpartition("@")
        if not at:
            mailbox, host = addr, ""
        out.append(b"(" + b" ".join([nstring(name or None), b"NIL", nstring(mailbox),
                                    nstring(host or None)]) + b")")
    return plist(out)


def envelope(p: Part) -> bytes:
    def raw(name: str) -> bytes:
        v = p.get(name)
        return nstring(None if v is None else v.encode("latin-1"))

    frm = p.get("From")
    sender = p.get("Sender") or frm
    reply_to = p.get("Reply-To") or frm
    items = [raw("Date"), raw("Subject"), _addresses(frm), _addresses(sender),
             _addresses(reply_to), _addresses(p.get("To")), _addresses(p.get("Cc")),
             _addresses(p.get("Bcc")), raw("In-Reply-To"), raw("Message-ID")]
    return b"(" + b" ".join(items) + b")"


def _params(msg: Message, header: str) -> bytes:
    out: list[bytes] = []
    params = msg.get_params(header=header) or []
    for k, v in params[1:]:
        text = collapse_rfc2231_value(v) if isinstance(v, tuple) else v
        out += [nstring(k.upper()), nstring(str(text))]
    return plist(out)


def _ext(p: Part) -> list[bytes]:
    """Extension data: disposition, language, location (RFC 3501 §7.4.2 body-ext-*)."""
    dsp = b"NIL"
    value = p.get("Content-Disposition")
    if value is not None:
        m = Message()
        m["Content-Disposition"] = value
        kind = value.split(";", 1)[0].strip()
        dsp = b"(" + nstring(kind.upper()) + b" " + _params(m, "content-disposition") + b")"
    lang = p.get("Content-Language")
    return [dsp, nstring(lang.encode("latin-1") if lang else None),
            nstring((p.get("Content-Location") or "").encode("latin-1") or None)]


def bodystructure(p: Part, *, ext: bool) -> bytes:
    if p.multipart:
        kids = b"".join(bodystructure(c, ext=ext) for c in p.children)
        sub = nstring(p.ctype.get_content_subtype().upper())
        tail = [_params(p.ctype, "content-type"), *_ext(p)] if ext else []
        return b"(" + kids + b" " + b" ".join([sub, *tail]) + b")"
    items = [nstring(p.ctype.get_content_maintype().upper()),
             nstring(p.ctype.get_content_subtype().upper()),
             _params(p.ctype, "content-type")]
    for name in ("Content-ID", "Content-Description"):
        v = p.get(name)
        items.append(nstring(None if v is None else v.encode("latin-1")))
    items.append(nstring((p.get("Content-Transfer-Encoding") or "7BIT").upper()))
    items.append(b"%d" % len(p.body))
    if p.inner is not None:
        items += [envelope(p.inner), bodystructure(p.inner, ext=ext), b"%d" % _lines(p.body)]
    elif p.ctype.get_content_maintype() == "text":
        items.append(b"%d" % _lines(p.body))
    if ext:
        md5 = p.get("Content-MD5")
        items += [nstring(md5.encode("latin-1") if md5 else None), *_ext(p)]
    return b"(" + b" ".join(items) + b")"


# -- fetch attributes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    name: str  # one of _SIMPLE, or "SECTION"
    label: str = ""  # the section as the response names it: "BODY[1.MIME]"
    peek: bool = True
    path: tuple[int, ...] = ()
    spec: str = ""  # "", HEADER, TEXT, MIME, HEADER.FIELDS, HEADER.FIELDS.NOT
    fields: tuple[str, ...] = ()
    origin: int | None = None
    length: int = 0

    @property
    def sets_seen(self) -> bool:
        return (self.name == "SECTION" and not self.peek) or self.name in ("RFC822", "RFC822.TEXT")


def parse_items(arg: Value) -> list[Item]:
    """The fetch attributes (RFC 3501 §6.4.5); ValueError for anything else."""
    words: list[Value] = arg if isinstance(arg, list) else [arg]
    if isinstance(arg, str) and arg.upper() in MACROS:
        words = [*MACROS[arg.upper()]]
    out = []
    for w in words:
        if not isinstance(w, str):
            raise ValueError("fetch attribute expected")
        if w.upper() in _SIMPLE:
            out.append(Item(w.upper()))
            continue
        m = _SECTION.fullmatch(w)
        if m is None:
            raise ValueError("unknown fetch attribute")
        path = tuple(int(n) for n in m.group(2).split(".")) if m.group(2) else ()
        spec = (m.group(3) or "").upper()
        names = tuple(f.strip('"') for f in (m.group(4) or "").split())
        if (spec.startswith("HEADER.FIELDS") != bool(names)) or (spec == "MIME" and not path):
            raise ValueError("bad section")
        if any(n == 0 or n > 100_000 for n in path):
            raise ValueError("bad part number")
        label = "BODY[" + w[w.index("[") + 1 : w.index("]")] + "]"
        origin = int(m.group(5)) if m.group(5) else None
        out.append(Item("SECTION", label, m.group(1).upper() == "BODY.PEEK", path, spec, names,
                        origin, int(m.group(6) or 0)))
    return out


def _resolve(root: Part, path: tuple[int, ...]) -> Part | None:
    ctx: Part | None = root  # a message (the root or an encapsulated one) or a multipart
    part: Part | None = None
    for n in path:
        if ctx is None:
            return None
        subparts = ctx.children if ctx.multipart else [ctx]  # a single part's body is part 1
        if n > len(subparts):
            return None
        part = subparts[n - 1]
        ctx = part.inner if part.inner is not None else (part if part.multipart else None)
    return part


def _header_fields(header: bytes, names: tuple[str, ...], keep: bool) -> bytes:
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    taking = False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
            taking = (name in wanted) == keep
        if taking:
            out.append(line + b"\r\n")
    return b"".join(out) + b"\r\n"


def section(data: bytes, root: Part, item: Item) -> bytes | None:
    """The octets of BODY[section]<partial> (None: no such part)."""
    if item.path:
        part = _resolve(root, item.path)
        if part is None:
            return None
        if item.spec in ("", "MIME"):
            content = part.body if item.spec == "" else part.header
            target = None
        else:
            target = part.inner if part.inner is not None else None
            if target is None:
                return None
    else:
        target = root
        content = data
    if target is not None:
        if item.spec == "HEADER":
            content = target.header
        elif item.spec == "TEXT":
            content = target.body
        elif item.spec.startswith("HEADER.FIELDS"):
            content = _header_fields(target.header, item.fields, item.spec == "HEADER.FIELDS")
    if item.origin is not None:
        content = content[item.origin : item.origin + item.length]
    return content
