"""Local web servers for the download tests, on 127.0.0.1 in daemon threads: one that runs an
http.server handler, over TLS if given a certificate; one that answers raw bytes, for the
answers no HTTP server library would send; and a self-signed certificate for 127.0.0.1."""
import functools
import http.server
import socketserver
import ssl
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path


def self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (openssl), valid for two days."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key,
                    "-out", cert], check=True, capture_output=True)
    return cert, key


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the files of its `directory`, logging nothing."""

    def log_message(self, *args) -> None:
        pass


def files(root: Path, handler=Quiet):
    """`handler` (a Quiet) serving the files under `root`, for served()."""
    return functools.partial(handler, directory=str(root))


@contextmanager
def served(handler, certificate: tuple[Path, Path] | None = None):
    """An HTTP server (HTTPS with `certificate`) running `handler`; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    scheme = "http"
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Raw(socketserver.BaseRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        self.server.requests.append(head.decode("latin-1"))
        try:
            self.server.answer(self.request)
        except OSError:
            pass                        # the client hung up: the test has what it needs


@contextmanager
def raw(answer):
    """A server that reads each request's head (kept in the yielded list) and then lets
    `answer(sock)` write what it likes; yields (URL of /file, requests)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Raw)
    server.daemon_threads = True
    server.answer, server.requests = answer, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/file", server.requests
    finally:
        server.shutdown()
        server.server_close()
