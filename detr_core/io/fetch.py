"""Fetch an image from a URL for a visitor, without letting the visitor reach the server's own network.

`fetch_bytes(url)` accepts http and https only, resolves the host itself and connects to the
checked address (so a name cannot resolve to a public address for the check and a private one for
the connection), refuses private, loopback, link-local, multicast, reserved and unspecified
addresses unless the server sets ``DETR_ALLOW_PRIVATE_URLS=1``, follows at most `MAX_REDIRECTS`
redirects, each checked the same way, stops after `TIMEOUT_S` seconds per connection and reads at
most `MAX_BYTES` (refused before decoding; the bytes then go through `load_image`'s checks like an
upload's). Every refusal is a `FetchError` whose message names no server path.

`host_answers(url)` says whether the host of `url` answers at all (a short HEAD request).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlsplit

from detr_core.errors import DETRError

__all__ = [
    "ALLOW_PRIVATE_ENV", "MAX_BYTES", "FetchError", "check_url", "fetch_bytes", "host_answers", "is_public",
    "private_allowed",
]  # fmt: skip

ALLOW_PRIVATE_ENV = "DETR_ALLOW_PRIVATE_URLS"
MAX_BYTES = 25 * 2**20  # as the upload's limit
TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
MAX_URL_CHARS = 2000
CHUNK = 64 * 2**10


class FetchError(DETRError):
    """An image URL that is refused or cannot be fetched."""


def private_allowed() -> bool:
    """Whether the server allows private, loopback and link-local addresses (DETR_ALLOW_PRIVATE_URLS=1)."""
    return os.environ.get(ALLOW_PRIVATE_ENV) == "1"


def check_url(url: str) -> tuple[str, str, int, str]:
    """`url` -> (scheme, host, port, path with query); FetchError unless it is a plain http(s) URL."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise FetchError(f"an image URL is at most {MAX_URL_CHARS} characters")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise FetchError("only http:// and https:// image URLs are fetched")
    if not parts.hostname:
        raise FetchError("the URL names no host")
    if parts.username or parts.password:
        raise FetchError("URLs with a user name or password are not fetched")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchError("the URL's port is not a number from 1 to 65535") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def is_public(address: str) -> bool:
    """Whether an IP address is on the public internet (not private, loopback, link-local, multicast,
    reserved, shared or unspecified; an IPv4-mapped IPv6 address is judged by its IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


def _public_address(host: str, port: int) -> str:
    """The first address of `host` (every one checked); FetchError for a non-public one unless allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchError(f"the host {host!r} is not known") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise FetchError(f"the host {host!r} has no address")
    if not private_allowed():
        for text in addresses:
            if not is_public(text):
                raise FetchError(
                    f"the host {host!r} is on a private, loopback, link-local or multicast network: "
                    "this server does not fetch from those"
                )
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand (the Host header keeps the name)."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to an address checked beforehand, the certificate checked for the name."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _read_capped(response: http.client.HTTPResponse, limit: int) -> bytes:
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise FetchError(f"the image is larger than {limit // 2**20} MB")
    chunks, total = [], 0
    while True:
        chunk = response.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise FetchError(f"the image is larger than {limit // 2**20} MB")
        chunks.append(chunk)


def fetch_bytes(url: str, limit: int = MAX_BYTES, timeout: float = TIMEOUT_S) -> bytes:
    """The body behind `url` (at most `limit` bytes), following checked redirects; FetchError otherwise."""
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, path = check_url(url)
        address = _public_address(host, port)
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, address, port, timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "detr-attention-explorer", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"the server answered {response.status} without saying where to")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise FetchError(f"the server answered {response.status} {response.reason}".rstrip())
            return _read_capped(response, limit)
        except (OSError, http.client.HTTPException) as e:
            reason = "it took too long" if isinstance(e, TimeoutError | socket.timeout) else type(e).__name__
            raise FetchError(f"the image could not be fetched from {host} ({reason})") from None
        finally:
            conn.close()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def host_answers(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of `url` answers an HTTP request within `timeout` s (any status counts)."""
    parts = urlsplit(url)
    request = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, with an error status
    except (OSError, ValueError):
        return False
