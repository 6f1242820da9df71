"""Hostile input through real HTTP: URL tricks, misbehaving upstreams and image files
built to hurt the decoder, against two deployed copies of the graph.

Every refusal is checked the same way: the exact status, the JSON error code, nothing
stored (record count and blob files unchanged) and the service still healthy after.
Every URL trick is aimed at loopback servers started here, which count the connections
they get: a refused URL must not have reached them. No traffic leaves 127.0.0.1 / ::1.

Two applications:
- "guarded" runs the default fetch policy (no private addresses at all).
- "open" allowlists exactly 127.0.0.1/32 (`url_fetch.allowed_networks`), so the fetch
  reaches the upstream on 127.0.0.1 (trickling, oversized, lying, redirecting) while
  every other loopback or private address stays forbidden. That makes "a redirect into
  a private range" testable end to end: the first hop is allowed, the next is not.
  With the default policy the same trick needs a public first hop, which cannot exist
  offline; tests/test_fetch.py::test_every_redirect_hop_is_checked covers it there with
  a stub resolver.
"""

from __future__ import annotations

import gzip
import io
import socket
import socketserver
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from ingress.settings import AppArgs
from tests.support.served_app import Deployed as ServedApp
from tests.support.served_app import deploy_graph

MAX_UPLOAD = 512 * 1024
MAX_FRAMES = 50
MAX_PIXELS = 4_000_000
TOTAL_TIMEOUT_S = 2.0
# Shorter than the whole-fetch deadline but far longer than the trickle's gaps: only
# the total deadline can end a trickling body.
READ_TIMEOUT_S = 1.5
TRICKLE_GAP_S = 0.05

# -- images made here ----------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _noise(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    return _encode(_noise(seed, size), "JPEG", quality=90)


def _png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    return _encode(_noise(seed, size), "PNG")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_bomb(side: int = 20_000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of side x side black pixels whose
    rows compress about 1000:1 (20000 x 20000 is 400 M pixels in ~50 KB)."""
    row = b"\x00" + b"\x00" * (side // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_declaring(width: int, height: int) -> bytes:
    """A header that claims width x height over a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _gif(screen: tuple[int, int], frames: int = 1, trailer: bytes = b"") -> bytes:
    """A GIF89a with a logical screen of `screen` and `frames` 1x1 frames, by hand."""
    out = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    for _ in range(frames):
        out += b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # graphic control extension
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return out + b"\x3b" + trailer


def _cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", (36, 24), (0, 255, 255, 0)), "JPEG")


def _png_16_bit() -> bytes:
    ramp = np.linspace(0, 65535, 32 * 24, dtype=np.uint16).reshape(24, 32)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    return _encode(image, "PNG")


def _palette_png_with_transparency() -> bytes:
    image = Image.new("P", (30, 20), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 15, 20))
    return _encode(image, "PNG", transparency=0)


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return _encode(_noise(11, (300, 200)), "JPEG", exif=exif, quality=90)


def _png_with_zip() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("index.html", "<script>alert(document.cookie)</script>")
    return _png(12) + archive.getvalue()


SVG = (
    b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'>"
    b"<script>alert(1)</script><rect width='10' height='10'/></svg>"
)
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
# The GIF header's screen size bytes double as the start of a JS comment: browsers run it
# as script, PIL finds no image in it.
GIF_JS_POLYGLOT = b"GIF89a/*\x01\x00\x00\x00\x00*/=1;alert(document.domain);//"
# A complete, valid GIF with an HTML page after its trailer.
GIF_WITH_HTML = _gif((2, 2), trailer=b"<html><script>alert(1)</script></html>")

# -- loopback upstreams --------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    server: Upstream

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        try:
            request_line = self.rfile.readline(65536).decode("latin-1")
            while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.split(" ")
            path = parts[1] if len(parts) > 1 else ""
            route = self.server.routes.get(path, _not_found)
            route(self.wfile)
        except (ConnectionError, TimeoutError):
            pass  # the fetcher hung up on us, as it should when it gives up


Route = Callable[[Any], None]


class Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.host = host
        self.port = int(self.server_address[1])
        self.routes: dict[str, Route] = {}
        self.connections = 0  # TCP connections accepted, whatever came over them
        self.lock = threading.Lock()

    def url(self, path: str, host: str | None = None) -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}{path}"


def _head(status: str, headers: dict[str, str | int]) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _body(data: bytes, content_type: str | None, *, length: int | bool | None = True) -> Route:
    """`length`: True for the real Content-Length, an int to lie, False/None to omit it
    (the body then ends when the connection closes)."""

    def route(out: Any) -> None:
        headers: dict[str, str | int] = {}
        if content_type:
            headers["Content-Type"] = content_type
        if length is True:
            headers["Content-Length"] = len(data)
        elif isinstance(length, int) and length is not False:
            headers["Content-Length"] = length
        out.write(_head("200 OK", headers) + data)
        out.flush()

    return route


def _chunked(data: bytes, content_type: str) -> Route:
    def route(out: Any) -> None:
        out.write(_head("200 OK", {"Content-Type": content_type, "Transfer-Encoding": "chunked"}))
        for start in range(0, len(data), 64 * 1024):
            piece = data[start : start + 64 * 1024]
            out.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        out.write(b"0\r\n\r\n")
        out.flush()

    return route


def _redirect(location: str) -> Route:
    def route(out: Any) -> None:
        out.write(_head("302 Found", {"Location": location, "Content-Length": 0}))
        out.flush()

    return route


def _status(status: str) -> Route:
    def route(out: Any) -> None:
        out.write(_head(status, {"Content-Length": 0}))
        out.flush()

    return route


def _not_found(out: Any) -> None:
    _status("404 Not Found")(out)


def _hang_up(out: Any) -> None:
    """Close the connection without a single byte of answer."""


def _trickle_body(out: Any) -> None:
    # One byte at a time, each well within the read timeout, never finishing in time.
    out.write(_head("200 OK", {"Content-Type": "image/jpeg", "Content-Length": 4096}))
    out.flush()
    for _ in range(4096):
        out.write(b"\xff")
        out.flush()
        time.sleep(TRICKLE_GAP_S)


def _trickle_head(out: Any) -> None:
    # Even the status line and headers arrive a byte at a time.
    for byte in _head("200 OK", {"Content-Type": "image/jpeg", "Content-Length": 10}):
        out.write(bytes([byte]))
        out.flush()
        time.sleep(TRICKLE_GAP_S)


@dataclass
class Upstreams:
    v4: Upstream  # 127.0.0.1
    v6: Upstream  # ::1

    @property
    def connections(self) -> int:
        return self.v4.connections + self.v6.connections


UPSTREAM_SECRET = b"<p>internal-only: db-password=hunter2</p>" * 20
# Distinct bytes per route: the same bytes twice would be a 200 duplicate, not a 201.
JPEG_AS_HTML = _jpeg(201)
JPEG_AS_OCTETS = _jpeg(202)
JPEG_AT_CHAIN_END = _jpeg(203)
JPEG_CONTROL = _jpeg(204)
TOO_BIG = b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    v4, v6 = Upstream("127.0.0.1"), Upstream("::1")
    v4.routes.update(
        {
            "/cat.jpg": _body(JPEG_CONTROL, "image/jpeg"),
            "/jpeg-as-html": _body(JPEG_AS_HTML, "text/html; charset=utf-8"),
            "/jpeg-as-octets": _body(JPEG_AS_OCTETS, "application/octet-stream"),
            "/html-as-jpeg": _body(HTML, "image/jpeg"),
            "/svg-as-svg": _body(SVG, "image/svg+xml"),
            "/svg-as-png": _body(SVG, "image/png"),
            "/gzip-encoded": _gzip_route(_jpeg(205)),
            "/big-with-length": _body(TOO_BIG, "image/jpeg"),
            "/big-no-length": _body(TOO_BIG, "image/jpeg", length=False),
            "/big-chunked": _chunked(TOO_BIG, "image/jpeg"),
            # Says 100 bytes and sends more: aiohttp's strict parser calls that a broken
            # answer rather than quietly keeping a truncated prefix.
            "/length-says-less": _body(_jpeg(206), "image/jpeg", length=100),
            # Says 10000 bytes, sends 100 and hangs up.
            "/length-says-more": _body(_jpeg(207)[:100], "image/jpeg", length=10_000),
            "/length-says-less-secret": _body(b"ok" + UPSTREAM_SECRET, "image/jpeg", length=2),
            "/trickle-body": _trickle_body,
            "/trickle-head": _trickle_head,
            "/hang-up": _hang_up,
            "/server-error": _status("500 Internal Server Error"),
            "/loop": _redirect("/loop"),
            "/chain/0": _body(JPEG_AT_CHAIN_END, "image/jpeg"),
        }
    )
    for hop in range(1, 5):
        v4.routes[f"/chain/{hop}"] = _redirect(f"/chain/{hop - 1}")
    v6.routes["/cat.jpg"] = _body(_jpeg(208), "image/jpeg")
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (v4, v6)]
    for thread in threads:
        thread.start()
    # Redirect targets that leave the allowlisted 127.0.0.1/32 (nothing listens on
    # 127.0.0.2: if a check failed, the answer would be a 502, never a 400).
    v4.routes.update(
        {
            "/to-file": _redirect("file:///etc/passwd"),
            "/to-gopher": _redirect(f"gopher://127.0.0.1:{v4.port}/_GET"),
            "/to-credentials": _redirect(f"http://user:pw@127.0.0.1:{v4.port}/cat.jpg"),
            "/to-ipv6-loopback": _redirect(v6.url("/cat.jpg")),
            "/to-127.0.0.2": _redirect(f"http://127.0.0.2:{v4.port}/cat.jpg"),
            "/to-decimal-127.0.0.2": _redirect(f"http://2130706434:{v4.port}/cat.jpg"),
            "/to-mapped-127.0.0.2": _redirect(f"http://[::ffff:127.0.0.2]:{v4.port}/cat.jpg"),
            "/to-unspecified": _redirect(f"http://0.0.0.0:{v4.port}/cat.jpg"),
        }
    )
    yield Upstreams(v4, v6)
    for server in (v4, v6):
        server.shutdown()
        server.server_close()


def _gzip_route(data: bytes) -> Route:
    packed = gzip.compress(data)

    def route(out: Any) -> None:
        headers: dict[str, str | int] = {
            "Content-Type": "image/jpeg",
            "Content-Encoding": "gzip",
            "Content-Length": len(packed),
        }
        out.write(_head("200 OK", headers) + packed)
        out.flush()

    return route


# -- the deployed applications -------------------------------------------------------


@dataclass
class Deployed(ServedApp):
    """The shared app handle, with the checks every hostile case repeats."""

    def assert_refused(self, response: httpx.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"] == code, error
        assert error["message"]

    def assert_healthy(self) -> None:
        health = self.client.get("/healthz")
        assert health.status_code == 200, health.text


def _deploy(
    name: str,
    base_url: str,
    blip: Path,
    clip: Path,
    data_dir: Path,
    url_fetch: dict[str, Any],
) -> Deployed:
    args = AppArgs.model_validate(
        {
            "storage": {"data_dir": str(data_dir)},
            "captioner": {"model": {"model_id": str(blip)}, "max_new_tokens": 4},
            "embedder": {"model": {"model_id": str(clip)}},
            "intake": {
                "max_upload_bytes": MAX_UPLOAD,
                "max_pixels": MAX_PIXELS,
                "max_frames": MAX_FRAMES,
            },
            "url_fetch": url_fetch,
            # The accepted-file tests read the caption each upload answers with.
            "captioning": {"mode": "inline"},
        }
    )
    deploy_graph(args, name, f"/{name}")
    client = httpx.Client(base_url=f"{base_url}/{name}", timeout=60)
    return Deployed(client, data_dir)


@pytest.fixture(scope="module")
def guarded(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    """The default fetch policy: no private, loopback or otherwise non-public target."""
    deployed = _deploy(
        "hostile-guarded",
        ray_session,
        tiny_blip_dir,
        tiny_clip_dir,
        tmp_path_factory.mktemp("hostile-guarded"),
        {},
    )
    yield deployed
    deployed.client.close()
    serve.delete("hostile-guarded")


@pytest.fixture(scope="module")
def open_app(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    """Reaches the upstream on 127.0.0.1 (allowlisted), nothing else non-public."""
    deployed = _deploy(
        "hostile-open",
        ray_session,
        tiny_blip_dir,
        tiny_clip_dir,
        tmp_path_factory.mktemp("hostile-open"),
        {
            "allowed_networks": ["127.0.0.1/32"],
            "total_timeout_s": TOTAL_TIMEOUT_S,
            "read_timeout_s": READ_TIMEOUT_S,
            "max_redirects": 3,
        },
    )
    yield deployed
    deployed.client.close()
    serve.delete("hostile-open")


# -- URL tricks under the default policy ---------------------------------------------

# (url template, code). {v4} is 127.0.0.1's port, {v6} the port of the server on ::1.
# Every one of them points at a live loopback server.
GUARDED_URLS = [
    # Non-http schemes, including ones that would reach the same servers.
    pytest.param("file:///etc/passwd", "bad_url", id="file"),
    pytest.param("file://127.0.0.1/etc/passwd", "bad_url", id="file-with-host"),
    pytest.param("ftp://127.0.0.1:{v4}/cat.jpg", "bad_url", id="ftp"),
    pytest.param("gopher://127.0.0.1:{v4}/_GET%20/cat.jpg", "bad_url", id="gopher"),
    pytest.param("dict://127.0.0.1:{v4}/info", "bad_url", id="dict"),
    pytest.param("ws://127.0.0.1:{v4}/cat.jpg", "bad_url", id="ws"),
    pytest.param("data:image/png;base64,iVBORw0KGgo=", "bad_url", id="data"),
    pytest.param("javascript:alert(1)", "bad_url", id="javascript"),
    pytest.param("//127.0.0.1:{v4}/cat.jpg", "bad_url", id="scheme-relative"),
    pytest.param("http:/127.0.0.1:{v4}/cat.jpg", "bad_url", id="no-host"),
    # Credentials, also as the classic "trusted.example@evil" disguise.
    pytest.param("http://user:pw@127.0.0.1:{v4}/cat.jpg", "bad_url", id="credentials"),
    pytest.param("http://user@127.0.0.1:{v4}/cat.jpg", "bad_url", id="user-only"),
    pytest.param("http://:pw@127.0.0.1:{v4}/cat.jpg", "bad_url", id="password-only"),
    pytest.param("http://images.example@127.0.0.1:{v4}/cat.jpg", "bad_url", id="at-disguise"),
    pytest.param("http://127.0.0.1:{v4}\\@images.example/cat.jpg", "bad_url", id="backslash"),
    pytest.param("http://%31%32%37.0.0.1:{v4}/cat.jpg", "bad_url", id="percent-encoded-host"),
    pytest.param("http://127.0.0.1.:{v4}/cat.jpg", "bad_url", id="trailing-dot-ip"),
    # Loopback itself, and every spelling of it.
    pytest.param("http://127.0.0.1:{v4}/cat.jpg", "forbidden_address", id="ipv4-loopback"),
    pytest.param("HTTP://127.0.0.1:{v4}/cat.jpg", "forbidden_address", id="upper-case-scheme"),
    pytest.param(" http://127.0.0.1:{v4}/cat.jpg", "forbidden_address", id="leading-space"),
    pytest.param("http://127.0.0.1:{v4}#@images.example/", "forbidden_address", id="fragment-at"),
    pytest.param("http://2130706433:{v4}/cat.jpg", "forbidden_address", id="decimal"),
    pytest.param("http://017700000001:{v4}/cat.jpg", "forbidden_address", id="octal-single"),
    pytest.param("http://0177.0.0.1:{v4}/cat.jpg", "forbidden_address", id="octal-dotted"),
    pytest.param("http://0177.1:{v4}/cat.jpg", "forbidden_address", id="octal-short"),
    pytest.param("http://0x7f.0.0.1:{v4}/cat.jpg", "forbidden_address", id="hex-dotted"),
    pytest.param("http://0x7f000001:{v4}/cat.jpg", "forbidden_address", id="hex-single"),
    pytest.param("http://127.1:{v4}/cat.jpg", "forbidden_address", id="short-form"),
    pytest.param("http://127.000.000.001:{v4}/cat.jpg", "forbidden_address", id="zero-padded"),
    pytest.param(
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{v4}/cat.jpg",
        "forbidden_address",
        id="fullwidth-digits",
    ),
    pytest.param("http://0.0.0.0:{v4}/cat.jpg", "forbidden_address", id="unspecified-v4"),
    pytest.param("http://0:{v4}/cat.jpg", "forbidden_address", id="zero"),
    pytest.param("http://[::1]:{v6}/cat.jpg", "forbidden_address", id="ipv6-loopback"),
    pytest.param("http://[0:0:0:0:0:0:0:1]:{v6}/cat.jpg", "forbidden_address", id="ipv6-long"),
    pytest.param("http://[::]:{v6}/cat.jpg", "forbidden_address", id="unspecified-v6"),
    pytest.param("http://[::ffff:127.0.0.1]:{v4}/cat.jpg", "forbidden_address", id="ipv4-mapped"),
    pytest.param("http://[::ffff:7f00:1]:{v4}/cat.jpg", "forbidden_address", id="ipv4-mapped-hex"),
    pytest.param("http://[::127.0.0.1]:{v4}/cat.jpg", "forbidden_address", id="ipv4-compatible"),
    # Names that resolve to loopback (through the system resolver, /etc/hosts).
    pytest.param("http://localhost:{v4}/cat.jpg", "forbidden_address", id="localhost"),
    pytest.param("http://LocalHost:{v4}/cat.jpg", "forbidden_address", id="localhost-mixed-case"),
]


@pytest.mark.parametrize(("template", "code"), GUARDED_URLS)
@pytest.mark.parametrize("path", ["/images", "/search/url"])
def test_url_tricks_are_refused_before_any_connection(
    guarded: Deployed, upstreams: Upstreams, path: str, template: str, code: str
) -> None:
    url = template.format(v4=upstreams.v4.port, v6=upstreams.v6.port)
    before, connections = guarded.state(), upstreams.connections
    response = guarded.client.post(path, json={"url": url})
    guarded.assert_refused(response, 400, code)
    assert upstreams.connections == connections, "a refused URL reached the upstream"
    assert guarded.state() == before
    guarded.assert_healthy()


# -- misbehaving upstreams (127.0.0.1 allowlisted) -----------------------------------


def test_allowlisted_upstream_is_fetched(open_app: Deployed, upstreams: Upstreams) -> None:
    """The control for everything below: 127.0.0.1 is reachable for this app."""
    response = open_app.client.post("/images", json={"url": upstreams.v4.url("/cat.jpg")})
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == _sha256(JPEG_CONTROL)


@pytest.mark.parametrize(
    ("route", "data"),
    [
        pytest.param("/jpeg-as-html", JPEG_AS_HTML, id="jpeg-served-as-text/html"),
        pytest.param("/jpeg-as-octets", JPEG_AS_OCTETS, id="jpeg-served-as-octet-stream"),
        pytest.param("/chain/3", JPEG_AT_CHAIN_END, id="three-redirects"),
    ],
)
def test_bytes_decide_not_the_declared_type(
    open_app: Deployed, upstreams: Upstreams, route: str, data: bytes
) -> None:
    total, _ = open_app.state()
    response = open_app.client.post("/images", json={"url": upstreams.v4.url(route)})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["content_type"] == "image/jpeg"
    assert record["sha256"] == _sha256(data)
    assert open_app.client.get(record["content_url"]).content == data
    assert open_app.state()[0] == total + 1


UPSTREAM_TRICKS = [
    pytest.param("/html-as-jpeg", 415, "unsupported_media_type", id="html-served-as-image/jpeg"),
    pytest.param("/svg-as-svg", 415, "unsupported_media_type", id="svg-served-as-svg"),
    pytest.param("/svg-as-png", 415, "unsupported_media_type", id="svg-served-as-image/png"),
    # Content-Encoding is never undone (no gzip bomb can inflate past the cap).
    pytest.param("/gzip-encoded", 415, "unsupported_media_type", id="gzip-encoded"),
    pytest.param("/big-with-length", 413, "payload_too_large", id="over-cap-with-length"),
    pytest.param("/big-no-length", 413, "payload_too_large", id="over-cap-no-length"),
    pytest.param("/big-chunked", 413, "payload_too_large", id="over-cap-chunked"),
    pytest.param("/length-says-less", 502, "fetch_failed", id="length-says-less"),
    pytest.param("/length-says-more", 502, "fetch_failed", id="length-says-more"),
    pytest.param("/trickle-body", 504, "fetch_timeout", id="trickling-body"),
    pytest.param("/trickle-head", 504, "fetch_timeout", id="trickling-headers"),
    pytest.param("/hang-up", 502, "fetch_failed", id="hangs-up"),
    pytest.param("/server-error", 502, "fetch_failed", id="upstream-500"),
    pytest.param("/chain/4", 502, "fetch_failed", id="four-redirects"),
    pytest.param("/loop", 502, "fetch_failed", id="redirect-loop"),
    # Redirects out of the allowlisted address: every hop is checked like the first.
    pytest.param("/to-file", 400, "bad_url", id="redirect-to-file"),
    pytest.param("/to-gopher", 400, "bad_url", id="redirect-to-gopher"),
    pytest.param("/to-credentials", 400, "bad_url", id="redirect-to-credentials"),
    pytest.param("/to-ipv6-loopback", 400, "forbidden_address", id="redirect-to-[::1]"),
    pytest.param("/to-127.0.0.2", 400, "forbidden_address", id="redirect-to-127.0.0.2"),
    pytest.param(
        "/to-decimal-127.0.0.2", 400, "forbidden_address", id="redirect-to-decimal-loopback"
    ),
    pytest.param(
        "/to-mapped-127.0.0.2", 400, "forbidden_address", id="redirect-to-mapped-loopback"
    ),
    pytest.param("/to-unspecified", 400, "forbidden_address", id="redirect-to-0.0.0.0"),
]


@pytest.mark.parametrize(("route", "status", "code"), UPSTREAM_TRICKS)
@pytest.mark.parametrize("path", ["/images", "/search/url"])
def test_misbehaving_upstreams_are_refused(
    open_app: Deployed, upstreams: Upstreams, path: str, route: str, status: int, code: str
) -> None:
    before = open_app.state()
    v6_connections = upstreams.v6.connections
    response = open_app.client.post(path, json={"url": upstreams.v4.url(route)})
    open_app.assert_refused(response, status, code)
    assert open_app.state() == before
    assert upstreams.v6.connections == v6_connections
    open_app.assert_healthy()


def test_upstream_bytes_are_not_echoed_in_errors(open_app: Deployed, upstreams: Upstreams) -> None:
    url = upstreams.v4.url("/length-says-less-secret")
    response = open_app.client.post("/images", json={"url": url})
    open_app.assert_refused(response, 502, "fetch_failed")
    assert b"hunter2" not in response.content, response.text


def test_closed_port_is_a_fetch_failure(open_app: Deployed) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/cat.jpg"
        before = open_app.state()
        response = open_app.client.post("/images", json={"url": url})
    open_app.assert_refused(response, 502, "fetch_failed")
    assert open_app.state() == before


# -- decoding tricks through POST /images ---------------------------------------------

BAD_FILES = [
    pytest.param(b"", 400, "invalid_image", id="zero-bytes"),
    pytest.param(_png(1)[:60], 400, "invalid_image", id="truncated-png"),
    pytest.param(_jpeg(2, (200, 150))[:3000], 400, "invalid_image", id="truncated-jpeg"),
    pytest.param(b"\x89PNG\r\n\x1a\n", 400, "invalid_image", id="png-signature-only"),
    pytest.param(_png_bomb(), 413, "image_too_large", id="png-bomb"),
    pytest.param(_png_declaring(100_000, 100_000), 413, "image_too_large", id="png-huge-ihdr"),
    pytest.param(_gif((65535, 65535)), 413, "image_too_large", id="gif-bomb-screen"),
    pytest.param(_gif((2100, 2100)), 413, "image_too_large", id="gif-screen-over-max-pixels"),
    pytest.param(
        _gif((4, 4), frames=MAX_FRAMES + 1), 413, "image_too_large", id="gif-too-many-frames"
    ),
    pytest.param(TOO_BIG, 413, "payload_too_large", id="over-max-upload-bytes"),
    pytest.param(SVG, 415, "unsupported_media_type", id="svg"),
    pytest.param(HTML, 415, "unsupported_media_type", id="html"),
    pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", 415, "unsupported_media_type", id="pdf"),
    pytest.param(GIF_JS_POLYGLOT, 400, "invalid_image", id="gif-js-polyglot"),
    pytest.param(
        b"\xff\xd8\xff<html><script>alert(1)</script></html>",
        400,
        "invalid_image",
        id="jpeg-magic-then-html",
    ),
]


@pytest.mark.parametrize(("data", "status", "code"), BAD_FILES)
def test_hostile_files_are_refused_and_store_nothing(
    open_app: Deployed, data: bytes, status: int, code: str
) -> None:
    before = open_app.state()
    response = open_app.client.post(
        "/images", files={"file": ("image.png", data, "image/png")}, data={"tags": "x"}
    )
    open_app.assert_refused(response, status, code)
    assert open_app.state() == before
    open_app.assert_healthy()


GOOD_FILES = [
    # (data, content type, width, height)
    pytest.param(_cmyk_jpeg(), "image/jpeg", 36, 24, id="cmyk-jpeg"),
    pytest.param(_png_16_bit(), "image/png", 32, 24, id="16-bit-png"),
    pytest.param(_palette_png_with_transparency(), "image/png", 30, 20, id="palette-transparent"),
    # Orientation 6: stored 300x200, shown (and recorded) 200x300.
    pytest.param(_exif_rotated_jpeg(), "image/jpeg", 200, 300, id="exif-orientation-6"),
    pytest.param(_gif((4, 4), frames=MAX_FRAMES), "image/gif", 4, 4, id="gif-at-frame-limit"),
    # Polyglots that are complete, valid images are images: accepted, and the original
    # bytes are kept and served back only with the detected image type.
    pytest.param(_png_with_zip(), "image/png", 40, 30, id="png-with-zip-appended"),
    pytest.param(GIF_WITH_HTML, "image/gif", 2, 2, id="gif-with-html-after-trailer"),
]


@pytest.mark.parametrize(("data", "content_type", "width", "height"), GOOD_FILES)
def test_awkward_but_valid_images_are_accepted(
    open_app: Deployed, data: bytes, content_type: str, width: int, height: int
) -> None:
    total, blobs = open_app.state()
    response = open_app.client.post("/images", files={"file": ("upload.bin", data, "text/html")})
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["content_type"], record["width"], record["height"]) == (
        content_type,
        width,
        height,
    )
    assert record["size_bytes"] == len(data)
    assert record["caption"]
    content = open_app.client.get(record["content_url"])
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"] == content_type
    assert open_app.state()[0] == total + 1
    assert len(open_app.state()[1]) > len(blobs)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
