"""API keys, scopes, rate limiting and the JSON body cap through real Ray and HTTP.
Keys reach the ingress replica as an environment variable, as from a Secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from tests.support.served_app import deploy_graph, tiny_graph_args

WRITER = "w" * 8 + "-writer-key-0123456789"
READER = "r" * 8 + "-reader-key-0123456789"
KEYS = f"ci-bot:read+write:{WRITER}\ndashboard:read:{READER}\n"
BURST = 12


@pytest.fixture(scope="module")
def secured(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(tmp_path_factory.mktemp("secured"))},
        auth={"enabled": True, "keys_env": "TEST_IMAGESEARCH_KEYS"},
        # Slow refill: the burst is all a client gets during the test.
        rate_limit={"enabled": True, "requests_per_s": 0.01, "burst": BURST},
    )
    deploy_graph(args, "secured", "/secured", ingress_env={"TEST_IMAGESEARCH_KEYS": KEYS})
    with httpx.Client(base_url=f"{ray_session}/secured", timeout=60) as client:
        yield client
    serve.delete("secured")


def _error(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_keys_and_scopes(secured: httpx.Client) -> None:
    search = {"query": "a dog"}
    missing = secured.post("/search/text", json=search)
    assert (missing.status_code, _error(missing)) == (401, "unauthorized")
    assert "WWW-Authenticate" in missing.headers
    wrong = secured.post("/search/text", json=search, headers={"X-API-Key": "x" * 32})
    assert (wrong.status_code, _error(wrong)) == (401, "unauthorized")
    assert (
        secured.post("/search/text", json=search, headers={"X-API-Key": READER}).status_code == 200
    )
    bearer = {"Authorization": f"Bearer {READER}"}
    assert secured.get("/images", headers=bearer).status_code == 200
    upload = {"file": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}
    forbidden = secured.post("/images", files=upload, headers={"X-API-Key": READER})
    assert (forbidden.status_code, _error(forbidden)) == (403, "forbidden")
    # A writer gets past access control to intake (this PNG is truncated: 400).
    written = secured.post("/images", files=upload, headers={"X-API-Key": WRITER})
    assert (written.status_code, _error(written)) == (400, "invalid_image")
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/images", headers={"X-API-Key": READER}).json()["total"] == 0


def test_the_page_opens_without_a_key_but_its_data_needs_one(secured: httpx.Client) -> None:
    # A browser opening the page sends no key; the page then sends the one entered.
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert secured.get(path, follow_redirects=True).status_code == 200, path
    thumbnail = secured.get("/images/00000000-0000-0000-0000-000000000000/thumbnail")
    assert (thumbnail.status_code, _error(thumbnail)) == (401, "unauthorized")
    listing = secured.get("/images", headers={"Authorization": f"Bearer {READER}"})
    assert listing.status_code == 200


def test_json_bodies_have_their_own_small_cap(secured: httpx.Client) -> None:
    huge = {"query": "dog", "padding": "x" * (128 * 1024)}
    response = secured.post("/search/text", json=huge, headers={"X-API-Key": WRITER})
    assert (response.status_code, _error(response)) == (413, "payload_too_large")


def test_rate_limit_per_key_with_retry_after(secured: httpx.Client) -> None:
    headers = {"X-API-Key": WRITER}
    statuses = [secured.get("/images", headers=headers).status_code for _ in range(BURST + 3)]
    assert 429 in statuses
    limited = secured.get("/images", headers=headers)
    assert (limited.status_code, _error(limited)) == (429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    # Health probes are never rate limited.
    assert secured.get("/healthz").status_code == 200
