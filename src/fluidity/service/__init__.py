"""``fluidity service``: the agent as a service of the logged-in user.

``render`` is pure: from a :class:`~fluidity.service.render.Target` (system,
home, program, config) it computes the systemd user unit, the launchd plist or
the Task Scheduler XML, and the ``systemctl``/``launchctl``/``schtasks``
commands, so all three are tested on any machine. ``apply`` is the thin edge
that fills the target in from this machine, writes the files and runs the
commands (or prints them with ``--dry-run``). Only the CLI imports it.
"""
