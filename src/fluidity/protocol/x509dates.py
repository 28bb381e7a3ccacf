"""The expiry dates of PEM certificates and CRLs, read without ``cryptography``. Pure.

The agent and server never load the ``cryptography`` bindings (about 15 MB of
resident memory each; ``tests/test_lean_imports.py``), yet both must warn
before their certificates or the CRL run out. Both dates sit at fixed places
near the start of the DER, so a reader of DER's tag-length-value framing
finds them without understanding the rest:

    Certificate  ::= SEQUENCE { tbsCertificate SEQUENCE {
                        [0] version OPTIONAL, serialNumber, signature, issuer,
                        validity SEQUENCE { notBefore Time, notAfter Time }, ... } ... }
    CertificateList ::= SEQUENCE { tbsCertList SEQUENCE {
                        version INTEGER OPTIONAL, signature, issuer,
                        thisUpdate Time, nextUpdate Time OPTIONAL, ... } ... }

    Time ::= UTCTime "YYMMDDHHMMSSZ" (years 1950-2049) | GeneralizedTime "YYYYMMDDHHMMSSZ"

Anything that does not fit raises ``CertificateError`` naming what was
expected, with the ``source`` the caller gives (a file name).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re

from fluidity.errors import CertificateError

__all__ = ["certificate_not_after", "crl_next_update", "pem_blocks"]

_SEQUENCE = 0x30
_INTEGER = 0x02
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_VERSION_TAG = 0xA0  # [0] EXPLICIT, constructed

_PEM = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\s*"
    rb"(?P<body>[A-Za-z0-9+/=\s]*?)\s*-----END (?P=label)-----"
)


def pem_blocks(data: bytes, label: str, source: str) -> list[bytes]:
    """The DER of every PEM block labelled ``label`` (``CERTIFICATE``, ``X509 CRL``) in
    ``data``, in order; CertificateError if there is none or one is not base64."""
    blocks = []
    for match in _PEM.finditer(data):
        if match.group("label").decode() != label:
            continue
        try:
            blocks.append(base64.b64decode(b"".join(match.group("body").split()), validate=True))
        except binascii.Error as exc:
            raise CertificateError(f"{source}: a {label} block is not valid base64") from exc
    if not blocks:
        raise CertificateError(f"{source}: no PEM {label} block found")
    return blocks


def certificate_not_after(der: bytes, source: str) -> dt.datetime:
    """The end of a DER certificate's validity (``notAfter``), in UTC."""
    tbs = _Reader(_Reader(der, source).enter(_SEQUENCE, "Certificate"), source)
    fields = _Reader(tbs.enter(_SEQUENCE, "tbsCertificate"), source)
    if fields.peek() == _VERSION_TAG:
        fields.skip()
    for _ in range(3):  # serialNumber, signature, issuer
        fields.skip()
    validity = _Reader(fields.enter(_SEQUENCE, "validity"), source)
    validity.time("notBefore")
    return validity.time("notAfter")


def crl_next_update(der: bytes, source: str) -> dt.datetime | None:
    """When a DER CRL should be replaced (``nextUpdate``, UTC), or None if it says not."""
    outer = _Reader(_Reader(der, source).enter(_SEQUENCE, "CertificateList"), source)
    fields = _Reader(outer.enter(_SEQUENCE, "tbsCertList"), source)
    if fields.peek() == _INTEGER:
        fields.skip()  # version
    fields.skip()  # signature
    fields.skip()  # issuer
    fields.time("thisUpdate")
    if fields.at_end() or fields.peek() not in (_UTC_TIME, _GENERALIZED_TIME):
        return None
    return fields.time("nextUpdate")


class _Reader:
    """Walks the DER elements of one constructed value, front to back."""

    def __init__(self, data: bytes, source: str) -> None:
        self._data = data
        self._at = 0
        self._source = source

    def at_end(self) -> bool:
        return self._at >= len(self._data)

    def peek(self) -> int:
        if self.at_end():
            raise self._error("the data ends early")
        return self._data[self._at]

    def enter(self, tag: int, what: str) -> bytes:
        """The contents of the next element, which must carry ``tag``."""
        if self.peek() != tag:
            raise self._error(f"expected {what}, found tag 0x{self.peek():02x}")
        return self._next()

    def skip(self) -> None:
        self._next()

    def time(self, what: str) -> dt.datetime:
        tag = self.peek()
        if tag not in (_UTC_TIME, _GENERALIZED_TIME):
            raise self._error(f"expected {what} as a time, found tag 0x{tag:02x}")
        return _parse_time(self._next(), tag == _UTC_TIME, what, self._source)

    def _next(self) -> bytes:
        """The contents of the next element; the reader moves past it."""
        data, at = self._data, self._at + 1  # single-byte tags are all X.509 uses here
        if at >= len(data):
            raise self._error("the data ends inside a tag")
        length = data[at]
        at += 1
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or at + count > len(data):
                raise self._error("bad DER length")
            length = int.from_bytes(data[at : at + count], "big")
            at += count
        if at + length > len(data):
            raise self._error("an element runs past the end of the data")
        self._at = at + length
        return data[at : at + length]

    def _error(self, problem: str) -> CertificateError:
        return CertificateError(f"{self._source}: not a DER certificate or CRL: {problem}")


def _parse_time(raw: bytes, utc_time: bool, what: str, source: str) -> dt.datetime:
    text = raw.decode("ascii", "replace")
    pattern = "%y%m%d%H%M%SZ" if utc_time else "%Y%m%d%H%M%SZ"
    try:
        parsed = dt.datetime.strptime(text, pattern)
    except ValueError as exc:
        raise CertificateError(f"{source}: {what} {text!r} is not a DER time") from exc
    if utc_time:
        # RFC 5280 4.1.2.5.1: YY >= 50 is 19YY, else 20YY (strptime pivots at 69).
        century = 1900 if int(text[:2]) >= 50 else 2000
        parsed = parsed.replace(year=century + int(text[:2]))
    return parsed.replace(tzinfo=dt.UTC)
