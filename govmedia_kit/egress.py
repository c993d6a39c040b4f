"""Where the platform may send a request it was told to send (webhook URLs): the shared
check against server-side request forgery (SSRF).

A webhook URL is typed by a unit's staff; dispatch then POSTs to it from inside the
cluster. Unchecked, it reaches what only the cluster can reach: the cloud's metadata
service (169.254.169.254: credentials), the other services' internal ports, the database,
NATS. So a URL is refused when its host is, or resolves to, an address that is not on
the public internet, and when its name is one only the cluster's DNS answers:

- never admitted, allow-list or not: link-local (169.254.0.0/16 with the metadata
  service, fe80::/10), unspecified (0.0.0.0/8, ::), multicast (224.0.0.0/4, ff00::/8),
  broadcast and reserved (240.0.0.0/4);
- refused unless the allow-list names them: private (10/8, 172.16/12, 192.168/16; ULA
  fc00::/7), shared CGNAT space (100.64/10), loopback (127/8, ::1; admitted in development
  so a receiver on the developer's machine works) and every other special-purpose block
  IANA lists as not globally reachable (documentation, benchmarking, 6to4 relay…);
- names: `localhost` and `*.localhost` (loopback: as loopback), single-label names
  (`account`, `nats`: the cluster's search domains complete them), `*.svc`,
  `*.svc.cluster.local`, `*.cluster.local`, `*.local`, `*.internal`, `*.localdomain`,
  `*.home.arpa`, `*.in-addr.arpa`/`*.ip6.arpa`;
- an IPv6 address that embeds an IPv4 one (mapped ::ffff:a.b.c.d, 6to4, Teredo, NAT64
  64:ff9b::/96) is judged by the IPv4 address it leads to;
- a name that resolves to several addresses is refused if any one is refused (the
  resolver chooses which one a connection takes).

The allow-list (`GOVMEDIA_WEBHOOK_ALLOW`, comma-separated): CIDRs (`10.20.0.0/24`) admit
the private/CGNAT/loopback addresses inside them; host names (`gw.unit.gov.cn`) admit that
exact name (not its subdomains) past the name rules, and the private addresses it resolves
to. A unit's own intranet gateway is admitted this way, one entry at a time, by ops.

Two places use it: the account service when a webhook URL is registered or changed
(`check_url`: the literal host, and the name resolved once, a name that does not resolve
yet being left to the second check), and dispatch every time it opens a connection
(`resolve_checked`: resolve, check every address, connect to a checked one, with the
URL's own Host and TLS server name), so a name whose DNS answer changes after registration
(DNS rebinding) cannot lead a delivery inside. The reason a URL is refused names the kind
of address (`private`, `link_local`…), never the address a name resolved to: a delivery's
stored error, shown to a unit's staff, must not map the intranet.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import AppError

log = logging.getLogger(__name__)

ALLOW_ENV = "GOVMEDIA_WEBHOOK_ALLOW"
RESOLVE_TIMEOUT_S = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Kinds no allow-list admits: the metadata service, "any address", group addresses.
NEVER = frozenset({"link_local", "unspecified", "multicast", "reserved"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_CLUSTER_SUFFIXES = (".svc", ".cluster.local", ".local", ".internal", ".localdomain", ".home.arpa",
                     ".in-addr.arpa", ".ip6.arpa")


class EgressRefused(Exception):
    """The address or name may not be reached; `kind` says why, without the address."""

    def __init__(self, kind: str):
        super().__init__(f"egress_forbidden: {kind}")
        self.kind = kind


def address_kind(address: IPAddress) -> str | None:
    """The kind of a non-public address (`loopback`, `private`, …), None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_kind(embedded) or None
    if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address.packed[0] == 0):
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and (address.is_reserved or address == ipaddress.IPv4Address(
            "255.255.255.255")):
        return "reserved"
    if address in _CGNAT:
        return "cgnat"
    if address.is_private:
        return "private"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "private"
    # Only global unicast (2000::/3) is the public IPv6 Internet; Python 3.11 calls IPv4-compatible
    # (::a.b.c.d), SIIT and local-use NAT64 (64:ff9b:1::/48) forms "global", which they are not.
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return "reserved"
    if not address.is_global:
        return "special"
    return None


def name_kind(host: str) -> str | None:
    """The kind of a host name the cluster's DNS (or this machine) answers, None for an
    ordinary public name. `host` is lower case, without a trailing dot."""
    if host == "localhost" or host.endswith(".localhost"):
        return "loopback"
    if "." not in host:
        return "single_label_name"
    if host.endswith(_CLUSTER_SUFFIXES):
        return "cluster_name"
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """What may be reached: loopback only outside production, plus the allow-list."""

    allow_loopback: bool = False
    allow_networks: tuple[Network, ...] = ()
    allow_names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls, production: bool, raw: str | None = None) -> "EgressPolicy":
        """`raw`: the allow-list, else GOVMEDIA_WEBHOOK_ALLOW. A malformed entry stops the
        process at start-up (ValueError) rather than being ignored."""
        raw = os.environ.get(ALLOW_ENV, "") if raw is None else raw
        networks, names = [], set()
        for entry in (e.strip() for e in raw.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = _normal_host(entry)
            if not name or "/" in name or ":" in name or " " in name:
                raise ValueError(f"{ALLOW_ENV}: not a CIDR or host name: {entry!r}")
            names.add(name)
        for network in networks:
            kind = address_kind(network.network_address)
            if kind in NEVER:
                raise ValueError(f"{ALLOW_ENV}: {network} is {kind} and is never admitted")
        return cls(allow_loopback=not production, allow_networks=tuple(networks), allow_names=frozenset(names))

    def describe(self) -> str:
        allowed = [str(n) for n in self.allow_networks] + sorted(self.allow_names)
        return (f"webhook egress: loopback {'ALLOWED (development; refused in production)' if self.allow_loopback else 'refused'}"
                f"; allow-list: {', '.join(allowed) if allowed else 'empty'}")

    # --- checks -------------------------------------------------------------------------

    def check_address(self, address: IPAddress, name_allowed: bool = False) -> None:
        """Raise EgressRefused unless `address` may be reached (`name_allowed`: it is what an
        allow-listed name resolved to)."""
        kind = address_kind(address)
        if kind is None:
            return
        if kind in NEVER:
            raise EgressRefused(kind)
        if kind == "loopback" and self.allow_loopback:
            return
        if name_allowed or any(address in n for n in self.allow_networks if n.version == address.version):
            return
        raise EgressRefused(kind)

    def check_host(self, host: str) -> IPAddress | None:
        """The literal address in `host` checked (answered), or the name checked by its
        form (None: it must be resolved and its addresses checked)."""
        host = _normal_host(host)
        if not host:
            raise EgressRefused("no_host")
        address = literal_address(host)
        if address is not None:
            self.check_address(address)
            return address
        if host in self.allow_names:
            return None
        kind = name_kind(host)
        if kind == "loopback" and self.allow_loopback:
            return None
        if kind is not None:
            raise EgressRefused(kind)
        return None

    async def resolve_checked(self, host: str, port: int) -> list[tuple]:
        """getaddrinfo results (family, type, proto, canonname, sockaddr) for `host`, every one
        checked; EgressRefused if the name or any address is refused, OSError (socket.gaierror)
        if it does not resolve."""
        host = _normal_host(host)
        literal = self.check_host(host)
        if literal is not None:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(literal), port))]
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        return self.check_resolved(host, infos)

    def check_resolved(self, host: str, infos: list[tuple]) -> list[tuple]:
        """What the resolver answered for `host`, every address checked (one refused address
        refuses the name: the connection could take any of them)."""
        if not infos:
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        named = _normal_host(host) in self.allow_names
        for info in infos:
            self.check_address(ipaddress.ip_address(info[4][0].split("%", 1)[0]), name_allowed=named)
        return infos

    async def check_url(self, url: str) -> None:
        """At registration or change of a webhook URL: 422 `webhook_url_forbidden` (with the
        kind of address, never the address) when the host is refused by its form, or the
        name resolves now to a refused address. A name that does not resolve yet is
        accepted: dispatch checks it again at every connection."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refusal("unsupported_url")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise _refusal("unsupported_url")
        try:
            await self.resolve_checked(parts.hostname, port)
        except EgressRefused as exc:
            raise _refusal(exc.kind)
        except (OSError, UnicodeError, TimeoutError):
            return  # not resolvable now: the connection-time check decides


def _refusal(kind: str) -> AppError:
    return AppError(422, "webhook_url_forbidden",
                    "推送地址不允许：不得指向内网、本机、链路本地（云元数据）、组播或集群内部地址",
                    {"field": "delivery.url", "reason": kind})


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return host


def literal_address(host: str) -> IPAddress | None:
    """An address written as the host: dotted quad, IPv6 (zone dropped), and the legacy
    forms the C resolver also accepts (`127.1`, `0x7f.0.0.1`, `2130706433`, `0177.0.0.1`),
    so that a spelling cannot pass as a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host and host[0].isdigit() and all(c in "0123456789abcdefx." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    return None


_policy: EgressPolicy | None = None


def policy(settings) -> EgressPolicy:
    """This process's policy, from its settings (GOVMEDIA_ENV, GOVMEDIA_WEBHOOK_ALLOW), made once."""
    global _policy
    if _policy is None:
        _policy = EgressPolicy.from_env(settings.production, settings.webhook_allow)
    return _policy


def announce(policy_: EgressPolicy) -> None:
    """One line at start-up saying what may be reached (development: loopback allowed)."""
    if policy_.allow_loopback:
        log.warning("%s", policy_.describe())
    else:
        log.info("%s", policy_.describe())
