"""Hot reload of the server's TLS material: certificate, key, CA and CRL.

``ReloadableContext`` holds the ``SSLContext`` new handshakes use. ``reload()``
builds a fresh one from the configured sources and swaps it in; connections
already established keep the context they were made with, so no live tunnel
notices. If anything is wrong with the new files -- unreadable, not PEM, a key
that does not match the certificate, a key others may read -- the old context
stays and one error line names the file and the problem.

Two things trigger a reload: SIGHUP (wired by the CLI, see
``fluidity.runtime.on_reload_signal``), and ``watch()``, which compares every
file's modification and change times, size, inode and mode every
``interval`` seconds. Polling
needs no dependency and works on every filesystem, including the bind mounts
and Kubernetes secret volumes (which swap a symlink) certificates usually
arrive on. The signature of a failed attempt is remembered too, so a broken
file is reported once, not every interval, and fixed files are picked up by
the next change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from fluidity.errors import CertificateError, ConfigError

log = logging.getLogger(__name__)

Signature = tuple[tuple[str | int, ...], ...]
# What is rebuilt: one ``SSLContext``, or a set of them built together (the server's).
ContextT = TypeVar("ContextT")


def file_signature(paths: Sequence[Path]) -> Signature:
    """What identifies each file's state: modification and change times, size, inode
    and mode (following symlinks), or just its path when it is missing. A chmod
    changes the change time and mode, so a key made readable by others is noticed."""
    parts: list[tuple[str | int, ...]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            parts.append((str(path),))
            continue
        parts.append((str(path), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode))
    return tuple(parts)


class ReloadableContext(Generic[ContextT]):
    """The server's current ``SSLContext`` (or set of contexts, all swapped at once),
    rebuilt from ``paths`` by ``build`` on demand.

    ``build`` must raise ``ConfigError`` or ``CertificateError`` (naming the file)
    when the material cannot be used; the first build's error propagates, so a
    server never starts with broken files. ``on_reloaded`` runs after each
    successful swap.
    """

    def __init__(
        self,
        build: Callable[[], ContextT],
        paths: Sequence[Path],
        on_reloaded: Callable[[], None] | None = None,
    ) -> None:
        self._build = build
        self._paths = tuple(paths)
        self._on_reloaded = on_reloaded
        self._signature = file_signature(self._paths)
        self._current = build()
        self.reloads = 0
        self.failures = 0

    @property
    def current(self) -> ContextT:
        """The context the next handshake uses."""
        return self._current

    def reload(self, reason: str) -> bool:
        """Rebuild the context now; True if swapped in, False if the old one stays."""
        self._signature = file_signature(self._paths)
        try:
            fresh = self._build()
        except (ConfigError, CertificateError) as exc:
            self.failures += 1
            log.error(
                "TLS reload (%s) failed, still using the previous certificates: %s", reason, exc
            )
            return False
        self._current = fresh
        self.reloads += 1
        log.info("TLS material reloaded (%s) for new connections: %s", reason, self._names())
        if self._on_reloaded is not None:
            self._on_reloaded()
        return True

    def changed(self) -> bool:
        """Whether any watched file differs from what the last (attempted) load saw."""
        return file_signature(self._paths) != self._signature

    def poll(self) -> bool:
        """Reload if a watched file changed; True if a new context was swapped in."""
        return self.changed() and self.reload("files changed")

    async def watch(self, interval: float) -> None:
        """Poll every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.poll()

    def _names(self) -> str:
        return ", ".join(str(path) for path in self._paths) or "inline PEM only"
