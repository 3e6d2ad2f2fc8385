"""Downloads that fail fast and clearly: a reachability check before a library's own download (TFDS
retries an unreachable host for minutes, Hugging Face for most of one), and one line when it fails.

The libraries keep doing the downloads; only the check and the message are ours.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from jaxcnn.errors import DownloadError, first_line

TIMEOUT_S = 5.0


def check_reachable(urls: Iterable[str], what: str, instead: str, timeout: float = TIMEOUT_S) -> None:
    """Raises DownloadError within about `timeout` seconds per server when a server of `urls` cannot be
    reached at all (no network, no DNS, a firewall). Any HTTP answer, even an error status, counts
    as reachable: the library's own download then reports what the server said. Proxies set in the
    environment (HTTPS_PROXY, ...) are used, as the libraries use them.

    Args:
      urls: what the library is about to download (one request per server).
      what: what is being downloaded, for the message ("TFDS dataset 'mnist'").
      instead: what the user can do offline, for the message.
    """
    servers = {}
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "https"):
            servers.setdefault(parts.netloc, url)
    for host, url in servers.items():
        request = urllib.request.Request(url, method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError:
            continue  # the server answered
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            reason = "timed out" if isinstance(reason, (socket.timeout, TimeoutError)) else reason
            raise DownloadError(f"cannot download {what}: {host} is unreachable ({reason}); check the network "
                                f"connection, or {instead}") from None


def download_failed(what: str, e: BaseException, instead: str) -> DownloadError:
    """The one-line error for a download that started and failed."""
    return DownloadError(f"downloading {what} failed ({first_line(e)}); check the network connection, or {instead}")
