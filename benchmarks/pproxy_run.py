"""Run pproxy (the Python baseline) on uvloop: ``python benchmarks/pproxy_run.py -l URL``.

pproxy 2.7 installs uvloop's policy and then calls ``asyncio.get_event_loop()``
outside a running loop, which uvloop 0.21 and later refuse ("There is no
current event loop"). This sets a uvloop loop as the current one first and
makes pproxy's own ``uvloop.install()`` a no-op, so pproxy runs unchanged on
the same event loop as Fluidity; without uvloop it runs on asyncio's.
"""

from __future__ import annotations

import asyncio
import sys


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    else:
        asyncio.set_event_loop(uvloop.new_event_loop())
        uvloop.install = lambda: None  # keep this loop: pproxy calls install()

    from pproxy import server

    sys.argv = ["pproxy", *sys.argv[1:]]
    server.main()


if __name__ == "__main__":
    main()
