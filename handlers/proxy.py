"""Behind a reverse proxy: believe its X-Real-IP, X-Forwarded-For and X-Forwarded-Proto, and only its."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Collection
from typing import Any

from tornado import httpserver, httputil

from services.settings import Network


def is_trusted(remote_ip: str, trusted_proxies: Collection[Network]) -> bool:
    """True when `remote_ip` lies in one of the trusted networks (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        address = ipaddress.ip_address(remote_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted_proxies)


class TrustedProxyHTTPServer(httpserver.HTTPServer):
    """An HTTPServer that applies the forwarded headers only on connections from a trusted proxy.

    Tornado's own `xheaders=True` believes them from anyone who can connect, so a client reaching
    bellcast directly could claim any address.
    """

    def initialize(  # type: ignore[override]
        self, request_callback: Any, trusted_proxies: Collection[Network] = (), **kwargs: Any
    ) -> None:
        """`trusted_proxies`: the networks whose forwarded headers are believed; empty believes none."""
        super().initialize(request_callback, xheaders=False, **kwargs)
        self.trusted_proxies = tuple(trusted_proxies)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """Wrap the request in Tornado's forwarded-headers adapter when the peer is a trusted proxy."""
        delegate = super().start_request(server_conn, request_conn)
        context = getattr(request_conn, "context", None)
        if self.trusted_proxies and is_trusted(getattr(context, "remote_ip", ""), self.trusted_proxies):
            # The adapter `xheaders=True` uses: rewrites remote_ip and protocol for this request only.
            delegate = ForwardedHeadersAdapter(delegate, request_conn)
        return delegate


class ForwardedHeadersAdapter(httpserver._ProxyAdapter):
    """Tornado's forwarded-headers adapter, believing X-Forwarded-Proto and never X-Scheme.

    Tornado prefers X-Scheme, which proxies (nginx included) pass on from the client unless told
    otherwise: a client could then claim https over plain http, and get cookies marked Secure.
    """

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        """Drop X-Scheme before Tornado reads the forwarded headers."""
        headers.pop("X-Scheme", None)
        return super().headers_received(start_line, headers)
