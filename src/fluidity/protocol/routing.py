"""Split routing: which targets the agent reaches directly, which through the tunnel.

The agent.yaml ``direct:`` list names the hosts that stay inside the corporate network
(the intranet, the VPN ranges): host globs such as ``*.corp.example`` or ``intranet``,
and networks such as ``10.0.0.0/8`` or a single address. :meth:`SplitRouting.route`
decides per target without a DNS lookup: an IP literal is matched against the
networks, a name against the globs. Resolving names would cost a round trip per
connection and could leak internal names to the outside resolver; a user who wants a
name routed by address writes the name as a glob.

:meth:`SplitRouting.pac_file` writes the same decision as a PAC file, so browsers
that use the agent through ``/proxy.pac`` go direct for the same hosts. It uses the
PAC built-ins (``shExpMatch`` for globs, ``isInNet`` for IPv4 networks, the
``isInNetEx`` extension for IPv6 ones) and only calls ``isInNet`` on IP literals,
because on a name it would resolve it, which :meth:`route` does not.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fluidity.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Route = Literal["direct", "tunnel"]

# Glob characters are those of PAC's shExpMatch: ``*`` and ``?``, nothing else, so a
# glob means the same in route() and in the PAC file (fnmatch's [seq] is excluded).
_GLOB = re.compile(r"^[a-z0-9_*?-]+(\.[a-z0-9_*?-]+)*$")


@dataclass(frozen=True, slots=True)
class SplitRouting:
    """The ``direct:`` list, parsed: host globs (lower case) and networks."""

    globs: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, direct: Iterable[str], *, key: str = "direct") -> SplitRouting:
        """Parse the agent.yaml list; a bad entry raises ConfigError naming ``key[index]``."""
        globs: list[str] = []
        networks: list[Network] = []
        for index, entry in enumerate(direct):
            parsed = _parse_entry(entry, f"{key}[{index}]")
            if isinstance(parsed, str):
                globs.append(parsed)
            else:
                networks.append(parsed)
        return cls(tuple(globs), tuple(networks))

    def route(self, host: str) -> Route:
        """``"direct"`` when ``host`` (a name or IP literal) is on the list, else ``"tunnel"``."""
        name = _normalise_host(host)
        address = _ip_literal(name)
        if address is None:
            matched = any(fnmatch.fnmatchcase(name, glob) for glob in self.globs)
        else:
            matched = any(address in network for network in self._same_family(address))
        return "direct" if matched else "tunnel"

    def pac_file(self, proxy_host: str, proxy_port: int) -> str:
        """A PAC file: listed hosts ``DIRECT``, everything else ``PROXY proxy_host:proxy_port``."""
        nets4 = [[str(n.network_address), str(n.netmask)] for n in self.networks if n.version == 4]
        nets6 = [str(n) for n in self.networks if n.version == 6]
        proxy = f"PROXY {_authority(proxy_host, proxy_port)}"
        return _PAC_TEMPLATE % {
            "globs": json.dumps(list(self.globs)),
            "nets4": json.dumps(nets4),
            "nets6": json.dumps(nets6),
            "proxy": json.dumps(proxy),
        }

    def _same_family(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Network]:
        return [n for n in self.networks if n.version == address.version]


def _parse_entry(entry: str, key: str) -> str | Network:
    """One ``direct:`` entry: a network (``10.0.0.0/8``, ``192.0.2.7``) or a host glob."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{key}: expected a host glob or a CIDR such as 10.0.0.0/8")
    text = entry.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    if "/" in text:
        raise ConfigError(f"{key}: {entry!r} is not a network; write it like 10.0.0.0/8")
    if text.startswith("."):
        raise ConfigError(f"{key}: {entry!r}: write *{text} to match the hosts under {text[1:]}")
    if not _GLOB.match(text):
        raise ConfigError(
            f"{key}: {entry!r} is not a host glob; use letters, digits, '-', '.', '*' and '?'"
        )
    return text


def _normalise_host(host: str) -> str:
    """Lower case, without IPv6 brackets, zone index or a trailing dot."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.split("%", 1)[0].rstrip(".")


def _ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``name`` spells, IPv4-mapped IPv6 folded to IPv4; None for a name."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The lists are JSON literals (valid JavaScript); entries were validated above, so no
# string can break out of its quotes. Kept ES3-simple for every PAC engine.
_PAC_TEMPLATE = """\
// Generated by the Fluidity agent: its split routing as a PAC file.
// Hosts on the agent's direct: list go DIRECT, everything else through the agent.
function FindProxyForURL(url, host) {
  var globs = %(globs)s;
  var nets4 = %(nets4)s;
  var nets6 = %(nets6)s;
  var h = host.toLowerCase().replace(/^\\[|\\]$/g, "").replace(/\\.$/, "");
  var i;
  if (/^\\d+\\.\\d+\\.\\d+\\.\\d+$/.test(h)) {
    for (i = 0; i < nets4.length; i++) {
      if (isInNet(h, nets4[i][0], nets4[i][1])) return "DIRECT";
    }
  } else if (h.indexOf(":") >= 0) {
    if (typeof isInNetEx === "function") {
      for (i = 0; i < nets6.length; i++) {
        if (isInNetEx(h, nets6[i])) return "DIRECT";
      }
    }
  } else {
    for (i = 0; i < globs.length; i++) {
      if (shExpMatch(h, globs[i])) return "DIRECT";
    }
  }
  return %(proxy)s;
}
"""
