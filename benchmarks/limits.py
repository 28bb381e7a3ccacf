"""Process limits the benchmark needs: thousands of sockets per process."""

from __future__ import annotations

import resource


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit.

    Children started afterwards inherit it, so the proxies under test can hold
    as many sockets as the benchmark opens.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
