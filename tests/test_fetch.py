"""The HTTP download layer (snapshot/fleet/fetch.py, download.py) against servers on 127.0.0.1
that drip, stall, redirect where they must not, answer what is not HTTP, or change the file
between two requests: each ends in one FetchFailed line that names the URL, within the limits
the test passes (small ones, so that each test takes a second or two); through the CLI
(`fleet poll`, `bundle apply URL`) in one `Error:` line, with nothing written."""
import http.server
import re
import time

import pytest

from bundle_lab import Lab
from clirun import error_of, invoke
from mtd import FlashType, Geometry
from snapshot.errors import FetchFailed
from snapshot.fleet.download import Download, Limits
from snapshot.fleet.fetch import read_whole
from sweep import image_digest
from web import raw, self_signed, served

KIB = 1024
NOR = Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0)
QUICK = Limits(timeout=2, deadline=20, min_rate=100, grace=1)


def failure(call) -> str:
    """The message of the FetchFailed `call()` raises, checked to be one line."""
    with pytest.raises(FetchFailed) as failed:
        call()
    message = str(failed.value)
    assert "\n" not in message
    return message


def drip(head: bytes, every: float = 0.1, count: int = 600):
    """An answer: `head`, then one byte every `every` seconds, `count` times."""
    def answer(sock):
        sock.sendall(head)
        for _ in range(count):
            time.sleep(every)
            sock.sendall(b"x")
    return answer


# -- slow servers --------------------------------------------------------------------------

def test_a_server_that_drips_is_stopped_by_the_minimum_rate():
    with raw(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")) as (url, _):
        started = time.monotonic()
        message = failure(lambda: Download(url, limits=QUICK).read())
    assert time.monotonic() - started < 8
    assert message.startswith(f"{url}: ") and "slower than 100 bytes/s" in message


def test_a_download_is_stopped_at_its_deadline():
    # No Content-Length (the body ends with the connection), so nothing extends the deadline;
    # the rate, 10 bytes/s, is above the minimum.
    limits = Limits(timeout=2, deadline=1.5, min_rate=1, grace=10)
    with raw(drip(b"HTTP/1.0 200 OK\r\n\r\n")) as (url, _):
        started = time.monotonic()
        message = failure(lambda: Download(url, limits=limits).read())
    assert 1.5 <= time.monotonic() - started < 8
    assert re.match(re.escape(url) + r": not done after \d+ s, its deadline", message)


def test_retries_and_their_pauses_end_at_the_deadline():
    limits = Limits(timeout=2, deadline=1.5, min_rate=1, grace=10)
    with raw(lambda sock: None) as (url, requests):      # closes without an answer
        started = time.monotonic()
        message = failure(lambda: Download(url, attempts=1000, backoff=0.2, limits=limits))
    assert 1.5 <= time.monotonic() - started < 8
    assert "its deadline" in message and 2 <= len(requests) < 20


def test_a_slow_download_above_the_minimum_rate_completes():
    limits = Limits(timeout=2, deadline=20, min_rate=4, grace=0.5)
    answer = drip(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n", every=0.05, count=30)
    with raw(answer) as (url, _):
        assert Download(url, limits=limits).read() == b"x" * 30


# -- redirects ------------------------------------------------------------------------------

class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def redirecting_to(location: str):
    class Redirect(Quiet):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
    return Redirect


class Plain(Quiet):
    """Serves "plain" at every path and notes each path asked for."""
    asked: list = []

    def do_GET(self):
        self.asked.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"plain")


def test_a_redirect_from_https_to_http_is_refused(tmp_path, monkeypatch):
    certificate = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    Plain.asked = []
    with served(Plain) as plain, served(redirecting_to(f"{plain}/file"), certificate) as tls:
        message = failure(lambda: Download(f"{tls}/file", backoff=0).read())
    assert message.startswith(f"{tls}/file: HTTP 302 redirects from https to http: refused")
    assert Plain.asked == []


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/file"])
def test_a_redirect_to_another_scheme_than_http_is_refused(target):
    with served(redirecting_to(target)) as url:
        message = failure(lambda: Download(f"{url}/file", backoff=0).read())
    scheme = target.split(":")[0]
    assert message.startswith(f"{url}/file: HTTP 302 redirects from http to {scheme}: refused")


# -- answers that are not HTTP ----------------------------------------------------------------

MALFORMED = {
    "bad status line": (b"SSH-2.0-OpenSSH_9.6\r\n",
                        "not an HTTP answer (its status line is 'SSH-2.0-OpenSSH_9.6\\r\\n')"),
    "too many headers": (b"HTTP/1.1 200 OK\r\n" + b"X-Filler: 1\r\n" * 101 + b"\r\n",
                         "not an HTTP answer (got more than 100 headers)"),
    "broken chunked body": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\r\nhello\r\nzz\r\n",
                            "the body broke off, or its chunked encoding is malformed"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_answer_to_a_small_fetch_is_one_line(case):
    answer, reason = MALFORMED[case]
    with raw(lambda sock: sock.sendall(answer)) as (url, _):
        message = failure(lambda: read_whole(url, 1000, QUICK))
    assert message.startswith(f"{url}: {reason}")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/channel.json"])
def test_a_small_fetch_takes_only_http_and_https_urls(url):
    assert failure(lambda: read_whole(url, 1000)) == f"{url}: not an http or https URL"


def test_a_small_fetch_larger_than_its_limit_is_refused():
    with served(Plain) as url:
        assert failure(lambda: read_whole(f"{url}/c", 4)) == f"{url}/c: larger than 4 bytes"


@pytest.fixture
def unit(tmp_path):
    """A unit (Lab) and its image."""
    lab = Lab.make(tmp_path / "lab")
    lab.reference(tmp_path / "ref.img", NOR)
    image = tmp_path / "unit.img"
    lab.unit_from(image)
    return lab, image


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_channel_answer_is_one_error_line_and_nothing_written(unit, tmp_path,
                                                                          case):
    lab, image = unit
    answer, reason = MALFORMED[case]
    with raw(lambda sock: sock.sendall(answer)) as (url, _):
        conf = tmp_path / "fleet.conf"
        conf.write_text(lab.config.read_text() + f"\nconfig fleet 'fleet'\n\toption channel "
                        f"'{url}'\n\toption group 'canary'\n\toption delay '0'\n")
        digest = image_digest(image)
        done = invoke("--device", image, "fleet", "poll", "--no-reboot",
                      env={**lab.env, "SNAPSHOT_CONFIG": str(conf)})
    assert error_of(done).startswith(f"Error: {url}: {reason}")
    assert image_digest(image) == digest


@pytest.mark.parametrize("case", ["bad status line", "too many headers"])
def test_a_malformed_bundle_answer_is_one_error_line_at_once(unit, case):
    lab, image = unit
    answer, reason = MALFORMED[case]
    with raw(lambda sock: sock.sendall(answer)) as (url, requests):
        digest = image_digest(image)
        done = invoke("--device", image, "bundle", "apply", url, "--no-reboot", env=lab.env)
    assert error_of(done) == f"Error: {url}: {reason}; nothing was committed"
    assert len(requests) == 1 and image_digest(image) == digest


# -- a resumed download --------------------------------------------------------------------

def changing(cut: int, seen: list):
    """Serves a file with its ETag and Range when If-Range names that ETag; the first answer
    stops after `cut` bytes, and the file and its ETag are new from the second request on."""
    versions = [(b"old " * 10000, '"old"'), (b"new " * 10000, '"new"')]

    class Changing(Quiet):
        def do_GET(self):
            first = not seen
            seen.append((self.headers.get("Range"), self.headers.get("If-Range")))
            body, etag = versions[0 if first else 1]
            start, ranged = 0, self.headers.get("Range")
            if ranged and self.headers.get("If-Range", etag) == etag:
                start = int(ranged.split("=")[1].rstrip("-"))
            self.send_response(206 if start else 200)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            self.wfile.write(body[start:start + cut] if first else body[start:])
            self.close_connection = True
    return Changing


def test_a_resumed_download_whose_file_changed_on_the_server_stops():
    seen = []
    with served(changing(20000, seen)) as url:
        message = failure(lambda: Download(f"{url}/fix.snb", backoff=0).read())
    assert message == (f"{url}/fix.snb changed on the server during the download; nothing "
                       f"was committed")
    assert seen == [(None, None), ("bytes=20000-", '"old"')]
