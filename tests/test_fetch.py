"""Images from a URL (detr_core/io/fetch.py and the sidebar's "Image URL" source), against an HTTP
server on the loopback interface: no network. Loopback is refused unless the server setting
DETR_ALLOW_PRIVATE_URLS=1 allows it, which the tests that fetch set."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from detr_core.io import fetch  # noqa: E402

SCENE = None  # the PNG the server serves (set by the fixture)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/scene.png":
            self._send(200, SCENE, "image/png")
        elif self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/scene.png")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/to-loopback":  # as a public host that points a visitor at the server's network
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/scene.png")
            self.end_headers()
        elif self.path == "/huge":  # says so in its header
            self.send_response(200)
            self.send_header("Content-Length", str(fetch.MAX_BYTES + 1))
            self.end_headers()
        elif self.path == "/endless":  # no length: the reader must stop by itself
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"\0" * 1024)
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    global SCENE
    from ui.caches import scene_png

    SCENE = scene_png.__wrapped__(3) if hasattr(scene_png, "__wrapped__") else scene_png(3)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.setenv(fetch.ALLOW_PRIVATE_ENV, "1")


@pytest.fixture
def refused(monkeypatch):
    monkeypatch.delenv(fetch.ALLOW_PRIVATE_ENV, raising=False)


def test_loopback_is_refused_without_the_server_setting(server, refused):
    for url in (f"{server}/scene.png", server.replace("127.0.0.1", "localhost") + "/scene.png"):
        with pytest.raises(fetch.FetchError, match="private, loopback"):
            fetch.fetch_bytes(url)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"],
)  # fmt: skip
def test_private_loopback_link_local_and_multicast_addresses_are_not_public(address):
    assert not fetch.is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_internet_addresses_are_public(address):
    assert fetch.is_public(address)


def test_with_the_setting_an_image_and_a_redirect_are_fetched(server, allowed):
    assert fetch.fetch_bytes(f"{server}/scene.png") == SCENE
    assert fetch.fetch_bytes(f"{server}/hop") == SCENE


def test_a_redirect_to_the_server_s_network_is_refused(server, refused, monkeypatch):
    """A 'public' host (an internet address, connected here to the loopback server) that redirects
    to 127.0.0.1 gets no further than the redirect."""
    port = int(server.rsplit(":", 1)[1])
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host, *args, **kwargs):
        if host == "public.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        return real_getaddrinfo(host, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        if address[0] == "93.184.216.34":
            return real_connect(("127.0.0.1", port), *args, **kwargs)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    assert fetch.fetch_bytes(f"http://public.test:{port}/scene.png") == SCENE  # the stand-in works
    with pytest.raises(fetch.FetchError, match="private, loopback"):
        fetch.fetch_bytes(f"http://public.test:{port}/to-loopback")


@pytest.mark.parametrize(
    ("path", "limit", "message"),
    [("/huge", fetch.MAX_BYTES, "larger than 25 MB"), ("/endless", 10_000, "larger than"),
     ("/loop", fetch.MAX_BYTES, "redirects"), ("/missing", fetch.MAX_BYTES, "404")],
)  # fmt: skip
def test_too_large_endless_redirect_loops_and_errors_are_refused(server, allowed, path, limit, message):
    with pytest.raises(fetch.FetchError, match=message):
        fetch.fetch_bytes(f"{server}{path}", limit=limit)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x", "http://", "http://user:pw@example.com/a.png",
     "javascript:alert(1)", "http://example.com:99999/a.png", "x" * 3000],
)  # fmt: skip
def test_only_plain_http_and_https_urls_are_fetched(url):
    with pytest.raises(fetch.FetchError):
        fetch.fetch_bytes(url)


def test_a_slow_server_times_out(allowed):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        with pytest.raises(fetch.FetchError, match="took too long"):
            fetch.fetch_bytes(f"http://127.0.0.1:{listener.getsockname()[1]}/a.png", timeout=0.5)
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------------
# The sidebar's "Image URL" source


def _app(**query_params):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=180)
    at.query_params = query_params
    return at.run()


def test_the_image_url_source_analyzes_the_image_and_keeps_its_url_in_the_link(server, allowed):
    at = _app(src="url", url=f"{server}/scene.png")
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.text_input(key="w_url").value == f"{server}/scene.png"
    assert at.dataframe or any("Nothing above the threshold" in i.value for i in at.info)
    link = dict(at.query_params)
    assert link["src"] == "url" and link["url"] == f"{server}/scene.png"
    again = _app(**link)
    assert again.text_input(key="w_url").value == link["url"]
    assert [m.value for m in again.markdown] == [m.value for m in at.markdown]


def test_the_image_url_source_refuses_loopback_with_a_message(server, refused):
    at = _app(src="url", url=f"{server}/scene.png")
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "cannot be fetched" in errors and "private, loopback" in errors and "Traceback" not in errors
