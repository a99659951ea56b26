"""Reading a bundle from a file or over HTTP(S), as a stream: nothing is copied to /tmp, which
is RAM on a router (DESIGN.md §15); and small whole files (a fleet's channel and its
signature) into memory, under the same rules. The HTTP side is snapshot/fleet/download.py,
imported only for a URL: a bundle read from a file needs none of urllib.

A download that breaks (the connection drops, the server restarts, a read times out) goes on
where it stopped: the next request asks for `Range: bytes=N-` with `If-Range` naming the
validator (ETag, else Last-Modified) of the first response. A server whose file changed
meanwhile answers 200 with the new file: the read then stops with an error, since the bytes
already written belong to the old one. A server that ignores Range answers 200 with the same
validator; the reader skips the bytes it has. After ATTEMPTS broken reads in a row it gives
up. An answer that is not HTTP (a bad status line, over 100 headers, a line too long) is not
a break: it stops the download at once.

A slow or hostile server cannot hold the device (and its lock) for long: each connect and
each read of the socket waits at most `timeout` seconds; the whole download, retries and
pauses included, ends at its deadline; from `grace` seconds on, its average rate must stay
at or above `min_rate` (download.Limits). A redirect is followed to http or https only, and never from
https to http. Every failure is a FetchFailed, one line that names the URL.
"""
from snapshot.errors import FetchFailed


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def open_source(source: str):
    """A readable stream of the bundle at `source`, a path or an http(s) URL."""
    if is_url(source):
        from snapshot.fleet.download import Download
        return Download(source)
    try:
        return open(source, "rb")
    except OSError as e:
        raise FetchFailed(f"{source}: {e.strerror}") from None


def read_whole(url: str, limit: int, limits=None) -> bytes:
    """The body at the http(s) `url`, of at most `limit` bytes, in one attempt (a fleet's
    channel: the next poll is the retry), within `limits` (download.Limits; default
    download.LIMITS)."""
    if not is_url(url):
        raise FetchFailed(f"{url}: not an http or https URL")
    from snapshot.fleet.download import LIMITS, Download
    with Download(url, attempts=1, limits=limits or LIMITS) as download:
        body = download.read(limit + 1)
    if len(body) > limit:
        raise FetchFailed(f"{url}: larger than {limit} bytes")
    return body
