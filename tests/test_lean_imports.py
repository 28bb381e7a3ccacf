"""The agent and server stay lean: running them never imports ``cryptography``.

Its bindings cost each process about 15 MB of resident memory, a tenth of the
memory budget for 10,000 idle tunnels; only ``fluidity certs`` and
``quickstart`` need it.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from fluidity import cli
cli.build_parser()
import fluidity.agent, fluidity.server.server, fluidity.runtime, fluidity.transport.tls
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "cryptography")
print(",".join(heavy))
"""


def test_the_agent_and_server_do_not_import_cryptography() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
