"""Private key files: the permission check, without the cryptography package.

Kept apart from the CA modules (``fluidity.pki.cadir`` and its users) so that
the agent and the server, which only need this check before handing paths to
``ssl``, never import ``cryptography``: its bindings cost each process about
15 MB of resident memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from fluidity.errors import CertificateError

__all__ = ["check_private_key_file"]


def check_private_key_file(path: Path) -> None:
    """Raise CertificateError unless ``path`` is a private key only its owner can use.

    On POSIX the file must exist and have no group or other permission bits
    (mode 0600 or stricter). On Windows, where modes mean little, only existence
    is checked.
    """
    try:
        mode = path.stat().st_mode & 0o777  # windows: read, but only judged on POSIX below
    except OSError as exc:
        raise CertificateError(f"cannot read private key {path}: {exc.strerror}") from exc
    if os.name == "nt" or not mode & 0o077:
        return
    what = "readable" if mode & 0o044 else "writable" if mode & 0o022 else "accessible"
    raise CertificateError(
        f"private key {path} (mode {mode:04o}) is {what} by others; run: chmod 600 {path}"
    )
