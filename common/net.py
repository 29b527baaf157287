"""Outbound HTTP to a URL somebody else chose (a request's image URL, a user's alert webhook).

Such a URL can point the process at places it must not reach, and the peer behind it can be slow
on purpose. So every request here:

- goes to an address checked first: link-local (cloud metadata at 169.254.169.254), multicast and
  unspecified addresses are refused always; loopback, private (LAN) and reserved ones unless the
  caller allows private hosts. Every address the name resolves to is checked, and the connection
  is made to the checked address (pinned), not to whatever the name resolves to a moment later;
- is http or https only;
- has a total deadline: a watchdog shuts the socket down when it passes, so a peer that sends one
  byte every second cannot hold the request past it (a socket timeout alone is per read);
- follows a redirect only when the caller allows it, and checks the new address the same way;
- reads at most `max_bytes` of the answer.

Errors are `FetchError` with a short reason by kind ("timed out after 10 s"), never the socket
library's message. Standard library only.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """Why a URL was not fetched; `status` is 413 when the answer is over the size limit, else 400."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def refused_address(address: str, allow_private: bool = False) -> str | None:
    """Why a connection to `address` (an IP literal) must not be made, or None when it may."""
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone index is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast or ip.is_unspecified:
        return "a multicast or unspecified address"
    if not ip.is_global and not allow_private:  # loopback, private, shared (100.64/10), reserved
        return "a loopback or private address"
    return None


def check_url(url: str, allow_private: bool = False) -> str:
    """The address `url` may be fetched from (its host resolved and checked), or FetchError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{url} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchError(f"{url} has an invalid port") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchError(f"could not fetch {url} (the host name does not resolve)") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        reason = refused_address(address, allow_private)
        if reason is not None:
            raise FetchError(f"{url} resolves to {reason}; refused")
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, not to whatever the name resolves to a moment later."""

    def __init__(self, host: str, address: str, **kw):
        super().__init__(host, **kw)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, address: str, **kw):
        super().__init__(host, context=ssl.create_default_context(), **kw)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # the name's certificate


@dataclass(frozen=True)
class Fetch:
    """How to fetch: the limits of one request."""

    allow_private: bool = False  # also loopback and private (LAN) hosts; link-local never
    deadline: float = 10.0  # seconds for the whole request, redirects and the body included
    max_bytes: int = 20 << 20  # of the answer's body
    max_redirects: int = 3  # 0: a redirect is an error, not followed
    user_agent: str = "vlm-edge"


def request(url: str, how: Fetch, *, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of `url` under `how`'s checks and limits (the module docstring), or FetchError.
    A status other than 200 is returned, not raised, except a redirect that is not followed."""
    end = time.monotonic() + how.deadline
    for _ in range(how.max_redirects + 1):
        address = check_url(url, how.allow_private)
        parts = urllib.parse.urlsplit(url)
        kind = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        left = end - time.monotonic()
        if left <= 0:
            raise FetchError(f"could not fetch {url} (timed out after {how.deadline:g} s)")
        connection = kind(parts.hostname, address, port=parts.port or (443 if parts.scheme == "https" else 80),
                          timeout=left)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        expired = threading.Event()

        def cut() -> None:  # the deadline passed: end whatever read or write is waiting
            expired.set()
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(left, cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.request(method, path, body=body, headers={"User-Agent": how.user_agent, **(headers or {})})
            response = connection.getresponse()
            if response.status in REDIRECTS and response.getheader("Location"):
                if how.max_redirects == 0:
                    raise FetchError(f"{url} answered with a redirect (HTTP {response.status}); redirects are not "
                                     "followed: give the final URL")
                url = urllib.parse.urljoin(url, response.getheader("Location"))
                continue
            data = bytearray()
            while len(data) <= how.max_bytes:
                chunk = response.read1(min(1 << 16, how.max_bytes + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
            if expired.is_set():
                raise socket.timeout()
        except FetchError:
            raise
        except (socket.timeout, TimeoutError):
            raise FetchError(f"could not fetch {url} (timed out after {how.deadline:g} s)") from None
        except ssl.SSLError:
            raise FetchError(f"could not fetch {url} (TLS failed)") from None
        except (OSError, http.client.HTTPException, ValueError):
            if expired.is_set():
                raise FetchError(f"could not fetch {url} (timed out after {how.deadline:g} s)") from None
            raise FetchError(f"could not fetch {url} (the connection failed)") from None
        finally:
            watchdog.cancel()
            connection.close()
        if len(data) > how.max_bytes:
            raise FetchError(f"{url} is over the limit of {how.max_bytes} bytes", 413)
        return response.status, bytes(data)
    raise FetchError(f"{url} redirects more than {how.max_redirects} times")
