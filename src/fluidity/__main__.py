"""``python -m fluidity``: the ``fluidity`` command (what service units run)."""

import sys

from fluidity.cli import main

sys.exit(main())
