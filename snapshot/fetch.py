"""Reading a bundle from a file or over HTTP(S), as a stream: nothing is copied to /tmp, which
is RAM on a router (DESIGN.md §15).

A download that breaks (the connection drops, the server restarts, a read times out) goes on
where it stopped: the next request asks for `Range: bytes=N-` with `If-Range` naming the
validator (ETag, else Last-Modified) of the first response. A server whose file changed
meanwhile answers 200 with the new file: the read then stops with an error, since the bytes
already written belong to the old one. A server that ignores Range answers 200 with the same
validator; the reader skips the bytes it has. After ATTEMPTS broken reads in a row it gives
up.
"""
import http.client
import time
import urllib.error
import urllib.request

from snapshot.errors import SnapshotError

ATTEMPTS = 5
TIMEOUT = 30
BACKOFF = 1.0


class FetchFailed(SnapshotError):
    """The source cannot be read (whole); nothing was committed."""


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def open_source(source: str):
    """A readable stream of the bundle at `source`, a path or an http(s) URL."""
    if is_url(source):
        return Download(source)
    try:
        return open(source, "rb")
    except OSError as e:
        raise FetchFailed(f"{source}: {e.strerror}") from None


class Download:
    """An HTTP(S) body read in order, resumed with Range after a break."""

    def __init__(self, url: str, attempts: int = ATTEMPTS, timeout: float = TIMEOUT,
                 backoff: float = BACKOFF):
        self.url, self.attempts, self.timeout, self.backoff = url, attempts, timeout, backoff
        self.offset = 0
        self.resumed = 0
        self._validator: str | None = None
        self._response = None
        self._connect()

    def _connect(self) -> None:
        failures = 0
        while True:
            try:
                self._response = self._request()
                return
            except FetchFailed:
                raise
            except (OSError, http.client.HTTPException) as e:
                failures += 1
                if failures >= self.attempts:
                    raise FetchFailed(f"{self.url}: {_reason(e)} ({failures} attempts); "
                                      f"nothing was committed") from None
                time.sleep(self.backoff * failures)

    def _request(self):
        headers = {"User-Agent": "snapshot"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self._validator:
                headers["If-Range"] = self._validator
        try:
            response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),
                                              timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500 and e.code not in (408, 429):
                raise FetchFailed(f"{self.url}: HTTP {e.code} {e.reason}; nothing was "
                                  f"written") from None
            raise
        except urllib.error.URLError as e:
            # Trying again does not help these: a certificate this router does not trust, and
            # a Python without ssl (OpenWrt's python3-openssl is not installed).
            if getattr(e.reason, "verify_message", None):
                raise FetchFailed(f"{self.url}: the server's certificate does not verify "
                                  f"({e.reason.verify_message}); nothing was written") from None
            if str(e.reason) == "unknown url type: https":
                raise FetchFailed(f"{self.url}: this Python has no ssl module (install "
                                  f"python3-openssl); nothing was written") from None
            raise
        if self._validator is None:
            self._validator = response.headers.get("ETag") or \
                response.headers.get("Last-Modified")
        if self.offset and response.status == 200:
            if response.headers.get("ETag", response.headers.get("Last-Modified")) \
                    != self._validator:
                response.close()
                raise FetchFailed(f"{self.url} changed on the server during the download; "
                                  f"nothing was committed")
            _skip(response, self.offset)
        elif self.offset and response.status != 206:
            response.close()
            raise OSError(f"HTTP {response.status} to a range request")
        if self.offset:
            self.resumed += 1
        return response

    def read(self, n: int = -1) -> bytes:
        failures = 0
        while True:
            try:
                data = self._response.read(n)
                if n != 0 and not data and self._expected_more():
                    raise OSError("the connection closed before the end")
                self.offset += len(data)
                return data
            except (OSError, ValueError, http.client.HTTPException) as e:
                failures += 1
                self._response.close()
                if failures >= self.attempts:
                    raise FetchFailed(f"{self.url}: {_reason(e)} at byte {self.offset} "
                                      f"({failures} attempts); nothing was committed") from None
                time.sleep(self.backoff * failures)
                self._connect()

    def _expected_more(self) -> bool:
        return bool(self._response.length)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _skip(response, n: int) -> None:
    while n:
        chunk = response.read(min(n, 65536))
        if not chunk:
            raise OSError("the response is shorter than what was read before")
        n -= len(chunk)


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
