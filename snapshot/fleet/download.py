"""The HTTP(S) download behind fetch.open_source and fetch.read_whole: resumed with Range after
a break, within Limits (the rules are fetch.py's docstring and DESIGN.md §15)."""
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request

from dataclasses import dataclass

from snapshot.errors import FetchFailed


@dataclass(frozen=True)
class Limits:
    """How long a download may take (DESIGN.md §15, Limits)."""
    timeout: float = 30         # seconds, each connect and each read of the socket
    deadline: float = 300       # seconds, plus 1 per `min_rate` bytes the server announces
    min_rate: float = 1024      # bytes per second, the average since the start...
    grace: float = 60           # ...from this many seconds on


LIMITS = Limits()

ATTEMPTS = 5
BACKOFF = 1.0
# Bytes asked of the socket at a time: each read returns after one receive, so that the
# deadline and the rate are checked between a drip's bytes.
READ = 65536


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, refused to another scheme than http(s) and from https to http.
    The check comes before urllib's own, whose refusal would quote the target raw."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("Location") or headers.get("URI")
        if target is not None:
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, target)).scheme
            if scheme not in ("http", "https") or (req.type, scheme) == ("https", "http"):
                fp.close()
                raise FetchFailed(f"{req.full_url}: HTTP {code} redirects from {req.type} to "
                                  f"{scheme or 'no'}: refused (only to http or https, and "
                                  f"never from https to http); nothing was written")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class Download:
    """An HTTP(S) body read in order, resumed with Range after a break, within `limits`."""

    def __init__(self, url: str, attempts: int = ATTEMPTS, backoff: float = BACKOFF,
                 limits: Limits = LIMITS):
        self.url, self.attempts, self.backoff, self.limits = url, attempts, backoff, limits
        self.offset = 0         # bytes handed to the reader
        self.received = 0       # bytes of bodies received, skipped ones included
        self.resumed = 0
        self._validator: str | None = None
        self._response = None
        self._opener = urllib.request.build_opener(_Redirects)
        self._started = time.monotonic()
        self._ends = self._started + limits.deadline
        self._connect()
        # A bundle takes as long as its length needs at the minimum rate, and a server that
        # announces more than it sends is stopped by that rate.
        self._ends += (self._response.length or 0) / limits.min_rate

    def _connect(self) -> None:
        failures = 0
        while True:
            self._check(time.monotonic())
            try:
                self._response = self._request()
                return
            except (OSError, ValueError, http.client.HTTPException) as e:
                failures += 1
                if failures >= self.attempts or not _transient(e):
                    raise self._failed(e, failures) from None
                self._pause(failures)

    def _request(self):
        headers = {"User-Agent": "snapshot"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self._validator:
                headers["If-Range"] = self._validator
        timeout = max(0.001, min(self.limits.timeout, self._ends - time.monotonic()))
        try:
            response = self._opener.open(urllib.request.Request(self.url, headers=headers),
                                         timeout=timeout)
        except urllib.error.HTTPError as e:
            # 4xx will be the same next time (408 and 429 ask for another try); a 3xx here
            # is a redirect loop.
            if e.code < 500 and e.code not in (408, 429):
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
            try:
                self._skip(response, self.offset)
            except Exception:
                response.close()
                raise
        elif self.offset and response.status != 206:
            response.close()
            raise OSError(f"HTTP {response.status} to a range request")
        if self.offset:
            self.resumed += 1
        return response

    def read(self, n: int = -1) -> bytes:
        """`n` bytes (all, if n < 0); fewer only at the end of the body."""
        parts, size = [], 0
        while n < 0 or size < n:
            data = self._next(READ if n < 0 else min(READ, n - size))
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    def _next(self, n: int) -> bytes:
        """Up to `n` bytes from one receive of the socket; none at the end of the body."""
        failures = 0
        while True:
            try:
                data = self._response.read1(n)
                if not data and self._expected_more():
                    raise OSError("the connection closed before the end")
            except (OSError, ValueError, http.client.HTTPException) as e:
                self._response.close()
                failures += 1
                if failures >= self.attempts or not _transient(e):
                    raise self._failed(e, failures) from None
                self._pause(failures)
                self._connect()
                continue
            self.offset += len(data)
            self._count(len(data))
            return data

    def _expected_more(self) -> bool:
        return bool(self._response.length)

    def _skip(self, response, n: int) -> None:
        """Read past the `n` bytes a server that ignored Range sends again."""
        while n:
            chunk = response.read1(min(n, READ))
            if not chunk:
                raise OSError("the response is shorter than what was read before")
            n -= len(chunk)
            self._count(len(chunk))

    def _count(self, received: int) -> None:
        self.received += received
        self._check(time.monotonic())

    def _check(self, now: float) -> None:
        """FetchFailed once past the deadline, or below the minimum rate after the grace."""
        elapsed = now - self._started
        if now > self._ends:
            raise FetchFailed(f"{self.url}: not done after {elapsed:.0f} s, its deadline; "
                              f"nothing was committed")
        if elapsed > self.limits.grace and self.received < self.limits.min_rate * elapsed:
            raise FetchFailed(f"{self.url}: {self.received} bytes in {elapsed:.0f} s, "
                              f"slower than {self.limits.min_rate:.0f} bytes/s; nothing was "
                              f"committed")

    def _pause(self, failures: int) -> None:
        time.sleep(max(0.0, min(self.backoff * failures, self._ends - time.monotonic())))

    def _failed(self, e: Exception, failures: int) -> FetchFailed:
        at = f" at byte {self.offset}" if self.offset else ""
        tries = f" ({failures} attempts)" if failures > 1 else ""
        return FetchFailed(f"{self.url}: {_reason(e)}{at}{tries}; nothing was committed")

    def close(self) -> None:
        if self._response is not None:
            self._response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _transient(e: Exception) -> bool:
    """A break that another request may not meet: a dropped, refused, reset or timed-out
    connection, a 5xx, a body cut short. An answer that is not HTTP will be the same again."""
    return isinstance(e, (OSError, http.client.IncompleteRead))


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    if isinstance(e, (http.client.InvalidURL, UnicodeError)):
        return f"not a URL this can fetch ({e})"
    if isinstance(e, http.client.IncompleteRead):
        return "the body broke off, or its chunked encoding is malformed"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    if isinstance(e, http.client.BadStatusLine):
        return f"not an HTTP answer (its status line is {e.line[:40]!r})"
    # These two say what was wrong in http.client's words; the others quote the server.
    if type(e) in (http.client.HTTPException, http.client.LineTooLong):
        return f"not an HTTP answer ({e})"
    if isinstance(e, http.client.HTTPException):
        return f"not an HTTP answer ({type(e).__name__}: {str(e)[:40]!r})"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
