"""A small Excrypt client for tests and tools (Python 3 standard library only).

The protocol is docs/PROTOCOL.md: ASCII frames ``[AO<CMD>;<TG><value>;...]``
over mutual TLS (or plain TCP, or the console's Unix socket). Requests may be
pipelined; responses come back in request order.

    from excrypt import Connection, ExcryptError
    with Connection("127.0.0.1", 9100, ca="ca.pem", cert="client.pem",
                    key="client.key") as c:
        c.login("pkcs11user", "secret")
        r = c.call("RAND", NB=16)
        data = r.hex("RN")
        answers = c.send_many([("ECHO", {"AG": "a"}), ("RAND", {"NB": 8})])

Values: ``bytes``/``bytearray`` become uppercase hex, ``bool`` ``Y``/``N``,
``int`` decimal, ``str`` is sent as is (it must be printable ASCII without
``;``, ``[`` or ``]``). A value of ``None`` leaves the tag out.
"""

import errno
import re
import select
import socket
import ssl
import time

__all__ = [
    "ERROR_NAMES", "ERROR_CODES", "ExcryptError", "ProtocolError", "Response",
    "Connection", "encode_value", "build_frame", "parse_frame", "split_frames",
]

# Wire error codes (docs/PROTOCOL.md "Errors"; 47 and 48 from the crypto
# service's specification). 34-43 and 46 are client-side only.
ERROR_NAMES = {
    1: "INTERNAL", 2: "NOMEM", 3: "MALFORMED", 4: "TOO_LARGE",
    5: "UNKNOWN_COMMAND", 6: "MISSING_FIELD", 7: "BAD_FIELD",
    8: "NOT_LOGGED_IN", 9: "COMMAND_NOT_ALLOWED", 10: "PERMISSION_DENIED",
    11: "SLOT_OUT_OF_RANGE", 12: "AUTH_FAILED", 13: "LOCKED",
    14: "PASSWORD_CHANGE_REQUIRED", 15: "WEAK_PASSWORD", 16: "ROLE_MISMATCH",
    17: "PORT_NOT_ALLOWED", 18: "NOT_FOUND", 19: "EXISTS", 20: "IN_USE",
    21: "BAD_KCV", 22: "CEREMONY_STATE", 23: "FRAGMENT_INVALID",
    24: "FRAGMENT_DUPLICATE", 25: "INCOMPLETE", 26: "MAJOR_KEY_NOT_LOADED",
    27: "TLS", 28: "CRYPTO", 29: "BACKUP_INVALID", 30: "STORAGE", 31: "BUSY",
    32: "FIPS", 33: "STATE", 44: "KEY_USAGE", 45: "UNSUPPORTED",
    47: "VERIFY_FAILED", 48: "DECRYPT_FAILED",
}
ERROR_CODES = {name: code for code, name in ERROR_NAMES.items()}

_RESERVED = frozenset(";[]")


class ProtocolError(Exception):
    """The peer broke the framing, closed the connection, or timed out."""


class ExcryptError(Exception):
    """An ``[AOERRO;CM..;EC..;ET..;]`` answer."""

    def __init__(self, cmd, code, text):
        self.cmd = cmd
        self.code = code
        self.text = text
        super().__init__(f"{cmd or '?'}: {self.name} ({code}): {text}")

    @property
    def name(self):
        return ERROR_NAMES.get(self.code, f"EC{self.code}")

    def __eq__(self, other):
        if isinstance(other, str):
            return self.name == other
        if isinstance(other, int):
            return self.code == other
        return NotImplemented

    __hash__ = Exception.__hash__


class Response(dict):
    """A successful answer: its fields as a dict of str, and the command."""

    def __init__(self, cmd, fields):
        super().__init__(fields)
        self.cmd = cmd

    def hex(self, tag, default=None):
        """The field ``tag`` decoded from hex (``default`` when absent)."""
        if tag not in self:
            if default is not None:
                return default
            raise KeyError(f"{self.cmd}: no {tag} in the answer")
        return bytes.fromhex(self[tag])

    def __repr__(self):
        return f"Response({self.cmd!r}, {dict.__repr__(self)})"


def encode_value(v):
    """One field value as it travels on the wire (str)."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex().upper()
    if isinstance(v, bool):
        return "Y" if v else "N"
    if isinstance(v, int):
        if v < 0:
            raise ValueError("numbers are unsigned")
        return str(v)
    if isinstance(v, str):
        for ch in v:
            if not (0x20 <= ord(ch) <= 0x7E) or ch in _RESERVED:
                raise ValueError(f"value {v!r} holds a reserved or non-printable character")
        return v
    raise TypeError(f"cannot encode {type(v).__name__} as a field value")


_CMD_RE = re.compile(r"[A-Z0-9]{4}\Z")
_TAG_RE = re.compile(r"[A-Z][A-Z0-9]\Z")


def _check_name(name, what):
    if not isinstance(name, str) or not (_CMD_RE if what == "command" else _TAG_RE).match(name):
        raise ValueError(f"bad {what} {name!r}")


def build_frame(cmd, fields=None, **kw):
    """``[AO<CMD>;TGval;...]`` as bytes. ``fields`` is a dict or a list of
    (tag, value) pairs; keyword arguments add more. ``None`` values are left
    out."""
    _check_name(cmd, "command")
    items = []
    if fields:
        items.extend(fields.items() if isinstance(fields, dict) else fields)
    items.extend(kw.items())
    parts = ["[AO", cmd, ";"]
    seen = set()
    for tag, val in items:
        if val is None:
            continue
        _check_name(tag, "tag")
        if tag in seen:
            raise ValueError(f"tag {tag} given twice")
        seen.add(tag)
        parts.append(tag)
        parts.append(encode_value(val))
        parts.append(";")
    parts.append("]")
    return "".join(parts).encode("ascii")


def parse_frame(frame):
    """A response frame (bytes or str, with its brackets) -> Response, or the
    ExcryptError it carries (returned, not raised)."""
    if isinstance(frame, (bytes, bytearray)):
        frame = bytes(frame).decode("ascii", errors="replace")
    if not (frame.startswith("[AO") and frame.endswith("]")) or len(frame) < 8:
        raise ProtocolError(f"not an Excrypt frame: {frame[:80]!r}")
    body = frame[3:-1]
    cmd, sep, rest = body.partition(";")
    if len(cmd) != 4 or not sep:
        raise ProtocolError(f"bad command in frame: {frame[:80]!r}")
    fields = {}
    if rest:
        if not rest.endswith(";"):
            raise ProtocolError(f"frame does not end with ';]': {frame[-80:]!r}")
        for item in rest[:-1].split(";"):
            if len(item) < 2:
                raise ProtocolError(f"bad field {item!r} in {frame[:80]!r}")
            fields[item[:2]] = item[2:]
    if cmd == "ERRO":
        try:
            code = int(fields.get("EC", ""))
        except ValueError:
            raise ProtocolError(f"error answer without a code: {frame[:120]!r}") from None
        return ExcryptError(fields.get("CM"), code, fields.get("ET", ""))
    return Response(cmd, fields)


def split_frames(buf):
    """Takes whole frames off the front of a bytearray; returns them as a list."""
    out = []
    while True:
        end = buf.find(b"]")
        if end < 0:
            if buf and buf[:1] != b"[":
                raise ProtocolError(f"garbage from the peer: {bytes(buf[:40])!r}")
            return out
        frame = bytes(buf[:end + 1])
        del buf[:end + 1]
        if not frame.startswith(b"["):
            raise ProtocolError(f"garbage from the peer: {frame[:40]!r}")
        out.append(frame)


def _as_request(req):
    """A request: (cmd, fields), (cmd,), a bare command name, or a frame."""
    if isinstance(req, (bytes, bytearray)):
        return None, bytes(req)
    if isinstance(req, str):
        return req, build_frame(req)
    cmd = req[0]
    fields = req[1] if len(req) > 1 else None
    return cmd, build_frame(cmd, fields)


class Connection:
    """One Excrypt connection. Not thread-safe: one per thread."""

    def __init__(self, host="127.0.0.1", port=9100, ca=None, cert=None, key=None,
                 tls=True, unix=None, timeout=120.0, server_hostname=None):
        self.timeout = timeout
        self._rbuf = bytearray()
        if unix:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(timeout)
            raw.connect(unix)
            self.sock = raw
        else:
            raw = socket.create_connection((host, port), timeout=timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                if ca:
                    ctx.load_verify_locations(cafile=ca)
                else:
                    ctx.load_default_certs()
                if cert:
                    ctx.load_cert_chain(cert, key)
                try:
                    self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname or host)
                except BaseException:
                    raw.close()
                    raise
            else:
                self.sock = raw
        self.sock.setblocking(False)

    # --- context manager ---
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    # --- I/O ---
    def _pending(self):
        return self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0

    def _try_send(self, out):
        """Sends what the socket takes now; returns True on progress."""
        try:
            n = self.sock.send(out[:65536])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return False
            raise ProtocolError(f"send: {e}") from e
        del out[:n]
        return n > 0

    def _try_recv(self):
        """Reads what is available now; returns True on progress."""
        try:
            data = self.sock.recv(262144)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return False
            raise ProtocolError(f"recv: {e}") from e
        if not data:
            raise ProtocolError("connection closed by the HSM")
        self._rbuf += data
        return True

    def _exchange(self, frames, window):
        """Writes the frames (at most ``window`` unanswered at a time) and
        yields the raw answers in order."""
        total = len(frames)
        sent = 0          # frames moved into the output buffer
        got = 0
        out = bytearray()
        ready = []
        last = time.monotonic()
        while got < total:
            while sent < total and sent - got < window:
                out += frames[sent]
                sent += 1
            progress = False
            if out and self._try_send(out):
                progress = True
            if self._try_recv():
                progress = True
                ready.extend(split_frames(self._rbuf))
            while ready:
                got += 1
                yield ready.pop(0)
                progress = True
            if got >= total:
                break
            if progress:
                last = time.monotonic()
                continue
            if self._pending():
                continue
            left = self.timeout - (time.monotonic() - last)
            if left <= 0:
                raise ProtocolError(f"no answer within {self.timeout:.0f} s "
                                    f"({got} of {total} answers received)")
            r, w, _ = select.select([self.sock], [self.sock] if out else [], [], min(left, 1.0))
            if r or w:
                last = time.monotonic() if r else last

    def send_many(self, requests, window=64):
        """Pipelines the requests (at most ``window`` outstanding) and returns
        one answer per request, in order: a Response, or the ExcryptError the
        HSM answered (returned, not raised)."""
        reqs = [_as_request(r) for r in requests]
        answers = []
        for (cmd, _), raw in zip(reqs, self._exchange([f for _, f in reqs], window)):
            ans = parse_frame(raw)
            if isinstance(ans, Response) and cmd is not None and ans.cmd != cmd:
                raise ProtocolError(f"answer {ans.cmd} to a {cmd} request (out of step)")
            answers.append(ans)
        return answers

    def call(self, cmd, fields=None, **kw):
        """One request; returns its Response or raises its ExcryptError."""
        if kw:
            fields = list((fields.items() if isinstance(fields, dict) else fields) or []) + list(kw.items())
        (ans,) = self.send_many([(cmd, fields)])
        if isinstance(ans, ExcryptError):
            raise ans
        return ans

    def login(self, identity, password, new_password=None):
        """LOGN; ``password`` is str (UTF-8) or bytes, sent as hex."""
        if isinstance(password, str):
            password = password.encode("utf-8")
        if isinstance(new_password, str):
            new_password = new_password.encode("utf-8")
        return self.call("LOGN", [("ID", identity), ("PW", password), ("NP", new_password)])


def _selftest():
    assert encode_value(b"\x01\xab") == "01AB"
    assert encode_value(b"") == ""
    assert encode_value(7) == "7" and encode_value(True) == "Y"
    assert build_frame("ECHO") == b"[AOECHO;]"
    assert build_frame("GPSE", {"AL": "GCM", "DT": b"\x00\xff", "IV": None}, TL=16) == \
        b"[AOGPSE;ALGCM;DT00FF;TL16;]"
    assert build_frame("GPSE", [("DT", b"")]) == b"[AOGPSE;DT;]"
    for bad in (lambda: encode_value("a;b"), lambda: encode_value("x]"),
                lambda: build_frame("ECH"), lambda: build_frame("ECHO", [("A", "1")]),
                lambda: build_frame("ECHO", [("AG", "1"), ("AG", "2")])):
        try:
            bad()
        except ValueError:
            pass
        else:
            raise AssertionError("accepted a bad value")
    r = parse_frame(b"[AORAND;RN00FF;BBY;]")
    assert isinstance(r, Response) and r.cmd == "RAND" and r["RN"] == "00FF" and r.hex("RN") == b"\x00\xff"
    assert r["BB"] == "Y"
    e = parse_frame("[AOERRO;CMGPSD;EC48;ETdecryption failed;]")
    assert isinstance(e, ExcryptError) and e.code == 48 and e.name == "DECRYPT_FAILED" and e.cmd == "GPSD"
    assert e == "DECRYPT_FAILED" and e == 48
    e = parse_frame("[AOERRO;EC3;ETmalformed request;]")
    assert e.cmd is None and e.name == "MALFORMED"
    assert parse_frame("[AOECHO;AG;BC1.0;]") == {"AG": "", "BC": "1.0"}
    buf = bytearray(b"[AOECHO;AG;][AORAND;RN01;][AOE")
    assert split_frames(buf) == [b"[AOECHO;AG;]", b"[AORAND;RN01;]"] and buf == b"[AOE"
    print("excrypt.py: self-test passed")


if __name__ == "__main__":
    _selftest()
