"""The search page at GET /: how it is served (always), and what a user does with it in a
real headless browser (Debian's chromium driven by Playwright; skipped without them),
against the real graph through a local Ray and HTTP, under a route prefix."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from ingress.http.web import PAGE_HEADERS, asset_names, load_asset
from tests.support.served_app import Deployed, served, tiny_graph_args

PREFIX = "/app"
CHROMIUM = Path("/usr/bin/chromium")
# The machine's closed network refuses Chromium's own background connections; these
# switches keep it from trying.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 170),
    "cyan": (40, 200, 210),
}


def picture(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo-like JPEG: a colour, a gradient and some noise, different for each seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(-60, 60, width)[None, :, None]
    base = np.array(colour, dtype=np.float64)[None, None, :]
    noise = rng.normal(0, 12, (height, width, 3))
    pixels = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def deployed(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    data_dir = tmp_path_factory.mktemp("page-data")
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(data_dir)},
        max_new_tokens=6,
    )
    # Under a route prefix: every link and request in the page must be relative.
    with served(ray_session, args, "webpage", PREFIX) as deployed:
        yield deployed


# -- serving the page -----------------------------------------------------------------


def test_page_and_assets_are_served_under_the_prefix(deployed: Deployed) -> None:
    client = deployed.client
    bare = client.get(str(client.base_url).rstrip("/"))  # ".../app", no slash
    assert bare.status_code in (307, 308), bare.text
    assert bare.headers["location"].endswith(f"{PREFIX}/")

    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    for name, value in PAGE_HEADERS.items():
        assert page.headers[name] == value
    assert page.content == load_asset("index.html").data  # type: ignore[union-attr]

    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(media)
        assert asset.headers["x-content-type-options"] == "nosniff"
        etag = asset.headers["etag"]
        cached = client.get(f"/static/{name}", headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b""


@pytest.mark.parametrize(
    "path", ["/static/index.html", "/static/nope.js", "/static/..%2Fapi.py", "/static/"]
)
def test_only_the_page_files_are_served(deployed: Deployed, path: str) -> None:
    response = deployed.client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


def test_page_is_not_in_the_api_schema(deployed: Deployed) -> None:
    paths = deployed.client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_page_needs_nothing_from_elsewhere() -> None:
    assert asset_names() == ["app.js", "index.html", "style.css"]
    html = load_asset("index.html").data.decode()  # type: ignore[union-attr]
    links = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert "static/app.js" in links and "static/style.css" in links
    for link in links:
        # Relative (so a route prefix works) and on this origin (so it works offline).
        assert link == "data:," or link == "#" or link.startswith(("static/", "#")), link
    css = load_asset("style.css").data.decode()  # type: ignore[union-attr]
    assert "url(" not in css and "@import" not in css
    js = load_asset("app.js").data.decode()  # type: ignore[union-attr]
    # Every request the script makes names a path relative to the page.
    assert not re.search(r"""(?:fetch|api)\(\s*["'`]/""", js)
    assert "//" not in "".join(re.findall(r"""api\(\s*[`"']([^`"']*)""", js))


# -- in a browser ---------------------------------------------------------------------


def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (CI installs Debian's chromium with apt-get)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (it is in the test extra)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def seed(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """The colour pictures over HTTP; warm colours tagged `warm`, the others `cool`."""
    records = {}
    for seed_no, (name, colour) in enumerate(COLOURS.items()):
        tags = f"{name},{'warm' if name in ('red', 'yellow', 'purple') else 'cool'}"
        response = client.post(
            "/images",
            files={"file": (f"{name}.jpg", picture(colour, seed_no), "image/jpeg")},
            data={"tags": tags},
        )
        assert response.status_code == 201, response.text
        records[name] = response.json()
    return records


def result_ids(page: Any) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#results li.result", "els => els.map(e => e.dataset.id)"
    )
    return ids


def wait_for_thumbnails(page: Any) -> None:
    """Every result's thumbnail has really loaded (decoded, with pixels)."""
    page.wait_for_function(
        """() => {
            const imgs = [...document.querySelectorAll('#results li.result img')];
            imgs.forEach(img => img.scrollIntoView({block: 'nearest'}));
            return imgs.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0);
        }"""
    )


def search_response(page: Any, path: str, action: Any) -> dict[str, Any]:
    """Run `action` and return the JSON the page got from the search endpoint `path`."""
    with page.expect_response(lambda r: r.url.split("?")[0].endswith(path)) as info:
        action()
    response = info.value
    assert response.status == 200, response.text()
    body: dict[str, Any] = response.json()
    return body


def assert_grid_shows(page: Any, body: dict[str, Any]) -> None:
    expected = body["results"]
    page.wait_for_function(
        "n => document.querySelectorAll('#results li.result').length === n", arg=len(expected)
    )
    assert result_ids(page) == [r["image"]["id"] for r in expected]
    metas = page.eval_on_selector_all(
        "#results li.result .meta", "els => els.map(e => e.textContent)"
    )
    for result, meta in zip(expected, metas, strict=True):
        assert f"score {result['score']:.3f}" in meta
        if result.get("keyword_score") is not None:
            assert f"keyword {result['keyword_score']:.3f}" in meta
    wait_for_thumbnails(page)


def test_search_page_in_a_browser(deployed: Deployed, browser: Any) -> None:
    client = deployed.client
    records = seed(client)
    ids = {name: record["id"] for name, record in records.items()}
    base = str(client.base_url).rstrip("/")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    thumbnails: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: (
            thumbnails.append((r.status, r.headers.get("content-type", "")))
            if "/thumbnail" in r.url
            else None
        ),
    )

    page.goto(base)  # no trailing slash: redirected to the directory
    assert page.url == f"{base}/"
    assert page.title() == "Image search"

    # Labels on every control; text on every button.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.id || e.name)"""
    )
    assert unlabelled == []
    nameless = page.evaluate(
        """() => [...document.querySelectorAll('button')]
            .filter(b => !(b.textContent.trim() || b.getAttribute('aria-label')))
            .map(b => b.outerHTML)"""
    )
    assert nameless == []

    # Keyboard only: tab to the search box, type, Enter.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "query":
            break
    assert page.evaluate("document.activeElement.id") == "query"
    page.keyboard.type("a colourful picture")
    body = search_response(page, "/search/text", lambda: page.keyboard.press("Enter"))
    assert len(body["results"]) == len(COLOURS)
    assert_grid_shows(page, body)
    assert all(status == 200 and ctype == "image/webp" for status, ctype in thumbnails)
    assert len(thumbnails) >= len(COLOURS)
    assert page.locator("#results-summary").inner_text().startswith(f"{len(COLOURS)} images")
    page.screenshot(path=str(artifacts_dir() / "search-page.png"), full_page=True)

    # Hybrid with the alpha slider (by keyboard), on a caption's own words.
    caption = records["green"]["caption"]
    page.fill("#query", caption)
    page.check("input[name=mode][value=hybrid]")
    page.focus("#alpha")
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    assert page.inner_text("#alpha-value") == "0.30"
    with page.expect_request(lambda r: r.url.endswith("/search/text")) as sent:
        body = search_response(page, "/search/text", lambda: page.click("#text-form button"))
    assert json.loads(sent.value.post_data) == {
        "query": caption,
        "limit": 24,
        "mode": "hybrid",
        "alpha": 0.3,
    }
    assert body["results"], body
    assert_grid_shows(page, body)
    page.check("input[name=mode][value=vector]")

    # Filters: only the warm pictures.
    page.click("#filters-panel summary")
    page.fill("#f-tags", "warm")
    with page.expect_request(lambda r: r.url.endswith("/search/text")) as sent:
        body = search_response(page, "/search/text", lambda: page.press("#query", "Enter"))
    assert json.loads(sent.value.post_data)["filters"] == {"tags_any": ["warm"]}
    assert {r["image"]["id"] for r in body["results"]} == {ids["red"], ids["yellow"], ids["purple"]}
    assert_grid_shows(page, body)
    # A minimum score and near-duplicate collapsing go with the search.
    page.fill("#min-score", "0")
    page.check("#dedup")
    with page.expect_request(lambda r: r.url.endswith("/search/text")) as sent:
        body = search_response(page, "/search/text", lambda: page.press("#query", "Enter"))
    sent_body = json.loads(sent.value.post_data)
    assert (sent_body["min_score"], sent_body["dedup"]) == (0, True)
    assert all(r["score"] >= 0 for r in body["results"])
    if body["results"]:
        assert_grid_shows(page, body)
    page.click("#filters button[type=reset]")
    assert page.input_value("#min-score") == "" and not page.is_checked("#dedup")

    # The file picker inside the drop zone is hidden from sight, not from the keyboard:
    # it is the stop before the URL field.
    page.focus("#image-url")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "image-file"

    # An image chosen with the file picker, then one dropped onto the drop zone.
    body = search_response(
        page,
        "/search/image",
        lambda: page.set_input_files(
            "#image-file",
            files=[
                {"name": "q.jpg", "mimeType": "image/jpeg", "buffer": picture(COLOURS["blue"], 2)}
            ],
        ),
    )
    assert body["results"][0]["image"]["id"] == ids["blue"]
    assert_grid_shows(page, body)
    assert page.locator("#drop-preview").is_visible()

    dropped = base64.b64encode(picture(COLOURS["yellow"], 3)).decode()
    body = search_response(
        page,
        "/search/image",
        lambda: page.evaluate(
            """b64 => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
                const zone = document.getElementById('dropzone');
                for (const type of ['dragenter', 'dragover', 'drop']) {
                    zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
                }
            }""",
            dropped,
        ),
    )
    assert body["results"][0]["image"]["id"] == ids["yellow"]
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert_grid_shows(page, body)

    # More like this, from the first result: everything else, never the image itself.
    first = page.locator("#results li.result").first
    with page.expect_request(lambda r: r.url.endswith("/search/similar")) as sent:
        body = search_response(
            page,
            "/search/similar",
            lambda: first.get_by_role("button", name=re.compile("^More like this")).click(),
        )
    assert json.loads(sent.value.post_data)["id"] == ids["yellow"]
    found = [r["image"]["id"] for r in body["results"]]
    assert ids["yellow"] not in found
    assert sorted(found) == sorted(i for name, i in ids.items() if name != "yellow")
    assert_grid_shows(page, body)
    assert ids["yellow"] not in result_ids(page)

    # The full image in a dialog, and its tags edited there.
    target = body["results"][0]["image"]
    page.locator("#results li.result .open").first.click()
    dialog = page.locator("#viewer")
    assert dialog.is_visible()
    page.wait_for_function(
        "() => { const i = document.getElementById('viewer-image'); return i.complete && i.naturalWidth > 0; }"
    )
    assert page.evaluate("document.getElementById('viewer-image').naturalWidth") == target["width"]
    assert page.inner_text("#viewer-title") == (target["caption"] or "Image")
    page.screenshot(path=str(artifacts_dir() / "search-page-dialog.png"))
    page.fill("#viewer-tags", "edited, favourite")
    with page.expect_response(lambda r: r.request.method == "PATCH") as patched:
        page.click("#tags-form button")
    assert patched.value.status == 200
    page.wait_for_function(
        "() => document.getElementById('viewer-status').textContent === 'Tags saved.'"
    )
    assert client.get(f"/images/{target['id']}").json()["tags"] == ["edited", "favourite"]
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    assert page.locator("#results li.result .tags").first.inner_text() == "#edited #favourite"

    # Upload two new pictures with tags through the form, then one of them again.
    total = client.get("/images").json()["total"]
    new_files = [
        {"name": f"new{i}.jpg", "mimeType": "image/jpeg", "buffer": picture(colour, 10 + i)}
        for i, colour in enumerate([(250, 130, 20), (30, 30, 30)])
    ]
    answers: list[Any] = []
    page.on(
        "response",
        lambda r: (
            answers.append(r) if r.request.method == "POST" and r.url.endswith("/images") else None
        ),
    )
    page.set_input_files("#upload-files", files=new_files)
    page.fill("#upload-tags", "uploaded, page")
    page.click("#upload-form button[type=submit]")
    page.wait_for_function(
        "() => document.querySelectorAll('#upload-results li.uploaded').length === 2"
    )
    listing = client.get("/images", params={"tags_all": ["uploaded", "page"]}).json()
    assert listing["total"] == 2 and client.get("/images").json()["total"] == total + 2
    texts = page.eval_on_selector_all("#upload-results li", "els => els.map(e => e.textContent)")
    assert len(answers) == 2 and all(a.status == 201 for a in answers)
    for answer, text in zip(answers, texts, strict=True):
        record = answer.json()
        assert text.startswith("new") and ": added" in text, text
        near = record["near_duplicate_of"]
        assert (near is not None) == ("near duplicate of" in text), (record, text)
        if near is not None:
            assert f"near duplicate of {near['id']}" in text

    page.set_input_files("#upload-files", files=new_files[:1])
    page.click("#upload-form button[type=submit]")
    page.wait_for_function(
        "() => (document.querySelector('#upload-results li') || {}).textContent?.includes('duplicate')"
    )
    assert "already indexed (duplicate)" in page.inner_text("#upload-results li")
    assert client.get("/images").json()["total"] == total + 2

    # Narrow screens: nothing runs off the side.
    page.set_viewport_size({"width": 380, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(artifacts_dir() / "search-page-narrow.png"), full_page=True)

    assert problems == [], problems

    # The API's JSON error, shown in the alert region: a URL the service may not fetch.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.fill("#image-url", "http://127.0.0.1:9/x.jpg")
    page.click("#url-form button")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert error.get_attribute("role") == "alert"
    assert error.inner_text().startswith("400 forbidden_address: ")
    assert not [p for p in problems if "status of 400" not in p], problems
    context.close()


def test_not_field_and_more_like_these_in_a_browser(deployed: Deployed, browser: Any) -> None:
    client = deployed.client
    # Pictures of its own (new bytes), whatever the other browser test left behind.
    for seed_no, colour in enumerate(COLOURS.values(), start=50):
        added = client.post(
            "/images", files={"file": (f"p{seed_no}.jpg", picture(colour, seed_no), "image/jpeg")}
        )
        assert added.status_code == 201, added.text
    base = str(client.base_url).rstrip("/")
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.goto(f"{base}/")

    # "But not": each comma-separated part a term weighing -0.5 against the query's 1.
    page.fill("#query", "a colourful picture")
    page.fill("#not-query", "people, a red umbrella ,people")
    with page.expect_request(lambda r: r.url.endswith("/search/text")) as sent:
        body = search_response(page, "/search/text", lambda: page.press("#query", "Enter"))
    assert json.loads(sent.value.post_data)["query"] == [
        {"text": "a colourful picture", "weight": 1},
        {"text": "people", "weight": -0.5},
        {"text": "a red umbrella", "weight": -0.5},
    ]
    assert_grid_shows(page, body)
    assert "but not “people”, “a red umbrella”" in page.inner_text("#results-summary")
    # Emptied, the plain query again.
    page.fill("#not-query", "")
    with page.expect_request(lambda r: r.url.endswith("/search/text")) as sent:
        body = search_response(page, "/search/text", lambda: page.press("#query", "Enter"))
    assert json.loads(sent.value.post_data)["query"] == "a colourful picture"
    assert_grid_shows(page, body)

    # Several results picked, then "More like these": none of them comes back.
    assert not page.locator("#selection").is_visible()
    boxes = page.locator("#results li.result .pick-box")
    chosen = result_ids(page)[:3]
    for index in range(3):
        boxes.nth(index).check()
    boxes.nth(2).uncheck()
    assert page.locator("#selection").is_visible()
    assert page.inner_text("#selection-count") == "2 selected"
    assert page.locator("#results li.result.picked").count() == 2
    with page.expect_request(lambda r: r.url.endswith("/search/similar")) as sent:
        body = search_response(page, "/search/similar", lambda: page.click("#similar-selected"))
    assert json.loads(sent.value.post_data)["ids"] == chosen[:2]
    found = [r["image"]["id"] for r in body["results"]]
    assert found and not set(chosen[:2]) & set(found)
    assert_grid_shows(page, body)
    # The selection was of the results it came from.
    assert not page.locator("#selection").is_visible()
    assert page.locator("#results .pick-box:checked").count() == 0
    assert problems == []
