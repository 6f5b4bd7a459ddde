"""Requests maskflow makes to addresses its users name (webhook callback URLs), SSRF-safe.

* At intake, `check_url`: https only (http where `webhook.allow_insecure`), a host, no
  credentials in the URL, at most MAX_URL_BYTES; a literal address that is not public is
  refused there already.
* At delivery, `post`: the host is resolved once, every address it resolves to is checked
  (loopback, private, link-local, CGNAT, multicast, reserved, unspecified, the cloud metadata
  address, fc00::/7, IPv4-mapped IPv6 by the address it maps), and the connection goes to the
  address that was checked, the Host header and TLS SNI keeping the name, so a DNS answer
  that changes in between (rebinding) changes nothing.  Redirects are refused, not followed.
  Hosts in `webhook.allow_hosts` skip the address check (a receiver on the operator's network).
* The answer's body is read up to a cap, then the connection is dropped.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from maskflow.infra.wiring.settings import WebhookConfig

# S3 keeps at most 2 KB of user metadata per object, where the URL travels (x-amz-meta-callback-url).
MAX_URL_BYTES = 1024
CALLBACK_METADATA_KEY = "callback-url"
_METADATA = ipaddress.ip_address("169.254.169.254")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BadCallback(ValueError):
    """A callback URL maskflow will not call; the message says why."""


class Refused(Exception):
    """A delivery refused before or instead of sending: a private address, a redirect."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # at most the cap
    location: str = ""


def check_url(url: str, policy: WebhookConfig) -> urllib.parse.SplitResult:
    """The URL split, or BadCallback naming what is wrong."""
    if not isinstance(url, str) or not url:
        raise BadCallback("callback_url must be a non-empty string")
    if len(url.encode("utf-8", "replace")) > MAX_URL_BYTES:
        raise BadCallback(f"callback_url is longer than {MAX_URL_BYTES} bytes")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise BadCallback("callback_url must not contain spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    allowed = ("https", "http") if policy.allow_insecure else ("https",)
    if parts.scheme not in allowed:
        raise BadCallback(f"callback_url must be {' or '.join(allowed)}, got {parts.scheme or 'no'} scheme")
    try:
        port = parts.port
    except ValueError:
        raise BadCallback("callback_url has a bad port") from None
    if not parts.hostname or port == 0:
        raise BadCallback("callback_url has no host")
    if parts.username is not None or parts.password is not None:
        raise BadCallback("callback_url must not carry credentials")
    literal = _literal(parts.hostname)
    if literal is not None and not _allowed(parts.hostname, policy) and blocked(literal):
        raise BadCallback(f"callback_url's address {literal} is not public")
    return parts


def callback_for(given: str, input_key: str, policy: WebhookConfig) -> str:
    """A task's callback URL, checked: the object's own, else the longest matching prefix's
    default (`webhook.by_prefix`); '' for none."""
    if not given:
        matches = [prefix for prefix in policy.by_prefix if input_key.startswith(prefix)]
        given = policy.by_prefix[max(matches, key=len)] if matches else ""
    if given:
        check_url(given, policy)
    return given


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address a callback must not reach: anything but a public unicast one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or ip == _METADATA
            or (ip.version == 4 and ip in _CGNAT))


def _allowed(host: str, policy: WebhookConfig) -> bool:
    return host.strip("[]").lower() in {h.strip("[]").lower() for h in policy.allow_hosts}


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the one DNS lookup of a delivery)."""
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


def pick_address(host: str, port: int, policy: WebhookConfig) -> str:
    """The address to connect to; Refused if any address of the host is not public."""
    try:
        addresses = [host.strip("[]")] if _literal(host) else resolve(host, port)
    except OSError as exc:
        raise ConnectionError(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise ConnectionError(f"{host} resolves to no address")
    if not _allowed(host, policy):
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if blocked(ip):
                raise Refused(f"{host} resolves to {ip}, which is not a public address")
    return addresses[0]


def post(url: str, body: bytes, headers: dict[str, str], policy: WebhookConfig) -> Answer:
    """POST `body` to `url`; the answer, its body capped.  Refused for an address or a
    redirect it will not follow; OSError / HTTPException for a failed exchange."""
    parts = check_url(url, policy)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = pick_address(host, port, policy)
    sock = socket.create_connection((address, port), timeout=policy.timeout)
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=policy.timeout)
        conn.sock = sock  # the checked address; Host stays the URL's
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                       "User-Agent": "maskflow-webhooks", **headers})
        response = conn.getresponse()
        data = response.read(policy.max_response_bytes)  # the rest is dropped with the connection
        answer = Answer(response.status, data, response.getheader("Location", "") or "")
    finally:
        sock.close()
    if 300 <= answer.status < 400:
        raise Refused(f"redirect ({answer.status}) to {answer.location[:200]!r} refused: "
                      f"callbacks are not redirected")
    return answer
