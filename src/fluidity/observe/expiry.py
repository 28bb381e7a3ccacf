"""Certificate and CRL expiry: a warning before they run out, and a gauge of the time left.

A server whose CRL has expired refuses every client, and an expired
certificate ends every tunnel at its next handshake; both fail at a fixed,
known moment. ``ExpiryWatch`` reads the dates (``fluidity.protocol.x509dates``,
without ``cryptography``), logs one warning per item found within
``warn_within`` seconds of its end (at start, after each reload and every
``CHECK_INTERVAL`` seconds while the process runs) and gives the seconds
left per kind for ``fluidity_certificate_expiry_seconds{kind=...}``.

The kinds: ``server`` (the server's certificate), ``ca`` (the earliest-ending
certificate of the CA file), ``crl`` (the CRL's nextUpdate) and ``client``
(the agent's certificate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fluidity.config.values import FileOrPem
from fluidity.errors import CertificateError, ConfigError
from fluidity.protocol.x509dates import certificate_not_after, crl_next_update, pem_blocks

log = logging.getLogger(__name__)

CHECK_INTERVAL = 6 * 3600.0  # seconds between checks of a long-running process
DAY = 86400.0

# What each kind is called in a warning, and what renews it.
_RENEW = {
    "server": ("the server certificate", "fluidity certs server --name NAME --force"),
    "ca": ("the CA certificate", "fluidity certs init --force, then reissue every certificate"),
    "crl": ("the CRL", "fluidity certs crl --dir DIR (run it from cron)"),
    "client": ("the client certificate", "fluidity certs client --name NAME --force"),
}

Sources = Iterable[tuple[str, FileOrPem | None]]


@dataclass(frozen=True)
class Expiry:
    """When one item stops being valid: ``kind`` (server, ca, crl, client), its file."""

    kind: str
    source: str
    not_after: dt.datetime


def read_expiry(kind: str, source: FileOrPem) -> Expiry | None:
    """The end of ``source``'s validity (a CRL's nextUpdate), or None for a CRL without
    one. Raises CertificateError or ConfigError naming the file."""
    where = source.describe
    data = source.read_bytes()
    if kind == "crl":
        next_update = crl_next_update(pem_blocks(data, "X509 CRL", where)[0], where)
        return None if next_update is None else Expiry(kind, where, next_update)
    blocks = pem_blocks(data, "CERTIFICATE", where)
    # The leaf comes first in a certificate file; a CA bundle is as good as its soonest end.
    ends = [certificate_not_after(der, where) for der in (blocks if kind == "ca" else blocks[:1])]
    return Expiry(kind, where, min(ends))


class ExpiryWatch:
    """The expiry dates of a process's certificates (and CRL), checked against a threshold.

    ``sources`` gives (kind, file) pairs each time ``refresh`` runs (None files are
    skipped): the server reads them again after each TLS reload. ``warn_within``
    is in seconds; 0 turns the warnings off (the gauge stays).
    """

    def __init__(
        self,
        sources: Callable[[], Sources],
        warn_within: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sources = sources
        self.warn_within = warn_within
        self._clock = clock
        self.expiries: tuple[Expiry, ...] = ()

    def refresh(self) -> None:
        """Read the dates again; an unreadable item is logged and left out."""
        found = []
        for kind, source in self._sources():
            if source is None:
                continue
            try:
                expiry = read_expiry(kind, source)
            except (CertificateError, ConfigError) as exc:
                log.warning("cannot read the expiry date of %s: %s", source.describe, exc)
                continue
            if expiry is not None:
                found.append(expiry)
        self.expiries = tuple(found)

    def seconds_left(self) -> Mapping[str, float]:
        """Seconds until each kind ends (negative once it has), the soonest per kind."""
        now = self._clock()
        left: dict[str, float] = {}
        for expiry in self.expiries:
            seconds = expiry.not_after.timestamp() - now
            left[expiry.kind] = min(seconds, left.get(expiry.kind, seconds))
        return left

    def check(self) -> list[str]:
        """Log (and return) a warning for each item within ``warn_within`` of its end."""
        if self.warn_within <= 0:
            return []
        now = self._clock()
        warnings = []
        for expiry in self.expiries:
            left = expiry.not_after.timestamp() - now
            if left <= self.warn_within:
                warnings.append(_warning(expiry, left))
        for message in warnings:
            log.warning("%s", message)
        return warnings

    def refresh_and_check(self) -> list[str]:
        """``refresh`` then ``check``: at start and after each reload."""
        self.refresh()
        return self.check()

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        """Check every ``interval`` seconds until cancelled (the dates do not move, time does)."""
        while True:
            await asyncio.sleep(interval)
            self.check()


def _warning(expiry: Expiry, left: float) -> str:
    what, renew = _RENEW.get(expiry.kind, (expiry.kind, "renew it"))
    when = expiry.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if left <= 0:
        return f"{what} {expiry.source} expired on {when}: renew it with {renew}"
    return (
        f"{what} {expiry.source} expires in {left / DAY:.1f} days ({when}): "
        f"renew it with {renew}, then reload"
    )
