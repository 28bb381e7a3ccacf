"""The soak (tests/support/soak.py): 1,000 CONNECT tunnels churning through real processes.

CI runs 30 seconds; ``pytest --soak`` adds the 10-minute run (also
``benchmarks/soak.py --minutes 10``). The summary is printed: ``pytest
tests/e2e/test_soak.py -rA``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fluidity.pki.certs import QuickstartPKI
from support.soak import MIB, run_soak

TUNNELS = 1000
# Each side needs one socket per open tunnel; the churn (hundreds of tunnels a second)
# adds the few closing as others open. A leak climbs past that and never comes back.
FD_TOLERANCE = 50
RSS_GROWTH_LIMIT = 16 * MIB


async def _soak(pki: QuickstartPKI, workdir: Path, seconds: float, every: float) -> None:
    report = await run_soak(pki, workdir, seconds, TUNNELS, sample_every=every)
    print(report.summary())
    assert report.completed > TUNNELS, report.summary()
    assert not report.problems(FD_TOLERANCE, RSS_GROWTH_LIMIT), report.summary()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_30_second_soak_with_1000_tunnels_stays_flat_in_fds_and_rss(
    pki: QuickstartPKI, tmp_path: Path
) -> None:
    await _soak(pki, tmp_path, seconds=30, every=1.0)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_a_10_minute_soak_with_1000_tunnels_stays_flat_in_fds_and_rss(
    pki: QuickstartPKI, tmp_path: Path
) -> None:
    await _soak(pki, tmp_path, seconds=600, every=10.0)
