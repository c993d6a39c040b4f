"""The caller's address, believed only as far as our own proxies vouch for it.

Behind the ingress every connection comes from the ingress, so the peer address alone would
make every citizen and every official one client. `X-Forwarded-For` (REST) and the
`x-forwarded-for` metadata (gRPC) name the hops, but anyone can send them: the header is read
only when the peer is one of our proxies (`<SERVICE>_TRUSTED_PROXIES`, CIDRs), and then from
the right, skipping hops that are our proxies too; the first hop that is not ours is the
client (what lies to its left was written by the client and is not believed).

uvicorn's own proxy handling is switched off (govmedia_kit/runtime.py), so this is the only
place a forwarded address is believed."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 192.168.4.7`: comma-separated addresses or CIDRs; a bad entry is a start-up error."""
    nets = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR in the trusted proxies setting: {part!r}") from None
    return tuple(nets)


def _address(raw: str) -> str | None:
    """A hop as written by a proxy: `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443`,
    `203.0.113.7:5123`; None when it is not an address."""
    hop = raw.strip().strip('"')
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:  # IPv4 with a port
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, spec: str) -> "TrustedProxies":
        return cls(parse_networks(spec))

    def trusts(self, address: str | None) -> bool:
        if not address or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 proxies as ::ffff:a.b.c.d
        return any(ip in net for net in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[str] | str | None) -> str:
        """The client's address: the peer unless the peer is our proxy; then the right-most
        forwarded hop that is not ours. A hop that is not an address ends the walk at the last
        proxy we trust (a proxy of ours always writes an address; garbage came from the client)."""
        peer = _address(peer) or peer or "unknown"
        if not self.trusts(peer) or not forwarded_for:
            return peer
        values = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for)
        hops = [h for value in values for h in value.split(",") if h.strip()]
        nearest = peer
        for raw in reversed(hops):
            hop = _address(raw)
            if hop is None:
                return nearest
            if not self.trusts(hop):
                return hop
            nearest = hop
        return nearest  # every hop is ours: the farthest of them


def grpc_peer_host(peer: str) -> str:
    """The address in a gRPC peer string: `ipv4:10.0.0.7:51234`, `ipv6:[::1]:51234`
    (`ipv6:%5B::1%5D:51234` in some grpc versions)."""
    kind, _, rest = (peer or "").partition(":")
    rest = rest.replace("%5B", "[").replace("%5D", "]")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        if rest.startswith("["):
            return rest[1:].partition("]")[0]
        return rest.rpartition(":")[0] or rest
    return peer or "unknown"


def http_client(request, trusted: TrustedProxies) -> str:
    """The client of a Starlette request (every X-Forwarded-For header, in order)."""
    peer = request.client.host if request.client else "unknown"
    return trusted.client(peer, request.headers.getlist("x-forwarded-for"))


def grpc_client(context, trusted: TrustedProxies) -> str:
    """The client of a gRPC call: the peer, or the `x-forwarded-for` metadata when the peer
    is our proxy (a gRPC ingress such as ingress-nginx's grpc backend sets it)."""
    peer = grpc_peer_host(context.peer() or "")
    metadata = context.invocation_metadata() or ()
    forwarded = [v for k, v in metadata if k.lower() == "x-forwarded-for" and isinstance(v, str)]
    return trusted.client(peer, forwarded)


def trusted_proxies(rt) -> TrustedProxies:
    """The service's trusted proxies, parsed once from its `trusted_proxies` setting
    (`<SERVICE>_TRUSTED_PROXIES`; a service without the setting trusts none)."""
    found = rt.state.get("trusted_proxy_set")
    if found is None:
        found = rt.state["trusted_proxy_set"] = TrustedProxies.parse(getattr(rt.settings, "trusted_proxies", "") or "")
    return found
