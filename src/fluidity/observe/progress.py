"""Progress lines for a person who waits: waking the cloud server, making certificates.

A plain line on stderr for a terminal; one JSON record when the command logs
JSON (``--log-format json``), so a script reading stderr never meets a stray
line. The agent's own waits ("waiting for the tunnel…", "tunnel up after
0.4 s") are ordinary log records of the agent.
"""

from __future__ import annotations

import logging
import sys

from fluidity.observe.logs import json_logging

log = logging.getLogger("fluidity.observe.progress")


def report(line: str, *, error: bool = False) -> None:
    """Say ``line`` to the person waiting (stderr, or a JSON log record; ``error`` for
    the line that says why the wait failed)."""
    if json_logging():
        log.log(logging.ERROR if error else logging.INFO, "%s", line)
    else:
        print(line, file=sys.stderr, flush=True)
