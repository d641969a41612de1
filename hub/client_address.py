"""Which address a request to the hub came from, as far as the lab can trust it.

Requests reach JupyterHub through configurable-http-proxy, which appends the address it was
connected from to X-Forwarded-For. Everything to the left of that entry was written by the
client (or by proxies in front of the lab) and can be forged, so it is never believed unless
the operator says how many proxies of theirs stand in front of the lab. Tornado's own
`remote_ip` would believe a client's X-Real-Ip header, so the rate limits use this instead.
"""

from __future__ import annotations

from tornado.httputil import HTTPServerRequest

FORWARDED_FOR = "X-Forwarded-For"


def client_address(
    request: HTTPServerRequest, header: str = FORWARDED_FOR, proxies: int = 0
) -> str:
    """The client's address.

    With `header` X-Forwarded-For (the default), the entry `proxies + 1` from the right: the
    one configurable-http-proxy appended, or with `proxies` reverse proxies of the lab's in
    front of it, the one the outermost of them appended. With any other header (e.g.
    X-Real-IP, which a reverse proxy *sets*), its value, which that proxy must overwrite on
    every request. Without the header, the address the connection came from.
    """
    value = request.headers.get(header, "")
    if value:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if header.lower() != FORWARDED_FOR.lower():
            return entries[-1] if entries else _peer(request)
        index = len(entries) - 1 - proxies
        if entries:
            # Fewer entries than proxies: the nearest one is the best there is.
            return entries[max(index, 0)]
    return _peer(request)


def _peer(request: HTTPServerRequest) -> str:
    context = getattr(request.connection, "context", None)
    # With xheaders=True (JupyterHub's setting) tornado overwrites remote_ip from headers and
    # keeps the socket's own address here.
    return str(getattr(context, "_orig_remote_ip", None) or request.remote_ip or "unknown")
