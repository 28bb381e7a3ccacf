"""The image's HEALTHCHECK: ``fluidity health`` on the config the running process was given.

One image runs as either ``server`` or ``agent``, with its config at a path
chosen by whoever ran it, so the health check cannot name the config itself.
It finds the fluidity process of the container (PID 1, or the child of an
init such as ``--init``), reads its role and ``--config PATH`` from its command line, and runs
``fluidity health --role ROLE --config PATH``, which checks that the
configured listener accepts TCP (``--address`` instead when the process was
given ``--listen``). Environment overrides (``FLUIDITY_SERVER__LISTEN``...)
reach it too: a health check runs with the container's environment.

Exit status: 0 healthy, 1 unhealthy (the codes HEALTHCHECK expects).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROLES = ("server", "agent")
TIMEOUT_S = 10.0


def fluidity_argv(proc: Path = Path("/proc")) -> list[str] | None:
    """Arguments after the program name of the lowest-numbered ``fluidity server|agent`` process."""
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        for index, arg in enumerate(args[:3]):
            if arg.endswith("fluidity") and any(r in args[index + 1 :] for r in ROLES):
                return args[index + 1 :]
    return None


def option(args: list[str], name: str) -> str | None:
    """The value of option ``name`` in ``args`` (``--name VALUE`` or ``--name=VALUE``), or None."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def health_args(args: list[str]) -> list[str]:
    """``fluidity health`` arguments that check the listener of ``fluidity ARGS``.

    A ``--listen`` given on the command line wins over the config, as it does
    for the running process; otherwise health reads the same config (file and
    ``FLUIDITY_<ROLE>__*`` variables) with the same role's schema.
    """
    listen = option(args, "--listen")
    if listen is not None:
        return ["--address", listen]
    role = next(arg for arg in args if arg in ROLES)
    config = option(args, "--config")
    return ["--role", role] + (["--config", config] if config is not None else [])


def main() -> int:
    args = fluidity_argv()
    if args is None:
        print("healthcheck: no 'fluidity server' or 'fluidity agent' process", file=sys.stderr)
        return 1
    command = [sys.executable, "/usr/bin/fluidity", "health", *health_args(args)]
    try:
        done = subprocess.run(command, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        print(f"healthcheck: 'fluidity health' took over {TIMEOUT_S} s", file=sys.stderr)
        return 1
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
