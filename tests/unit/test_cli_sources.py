"""`imagesearch index` source expansion: folders, globs, URL lists, s3:// prefixes."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from imagesearch_cli.sources import (
    FileSource,
    S3Source,
    Source,
    UrlSource,
    UsageError,
    expand,
)
from tests.stores.s3_backend import moto_s3_endpoint, unique_bucket

__all__ = ["moto_s3_endpoint"]  # the fixture, imported for this module's tests


def _tree(root: Path) -> Path:
    files = {
        "a.jpg": b"a",
        "sub/b.PNG": b"bb",
        "sub/deeper/c.webp": b"ccc",
        "sub/notes.txt": b"https://example.com/x.jpg\n",
        "readme.md": b"hello",
        ".hidden/d.jpg": b"d",
        ".e.jpg": b"e",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _labels(found: list[Source]) -> list[str]:
    return [source.label for source in found]


def test_folders_are_walked_for_image_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos")
    found = expand([str(root)])
    assert _labels(found.sources) == [
        str(root / "a.jpg"),
        str(root / "sub/b.PNG"),
        str(root / "sub/deeper/c.webp"),
    ]
    assert not found.problems
    first = found.sources[0]
    assert isinstance(first, FileSource) and first.size == 1
    identity = first.identity()
    assert identity["source"] == str(root / "a.jpg") and identity["size"] == 1
    assert identity["version"] == str((root / "a.jpg").stat().st_mtime_ns)


def test_all_files_tries_everything_but_hidden(tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos")
    labels = _labels(expand([str(root)], all_files=True).sources)
    assert str(root / "readme.md") in labels
    # Inside a folder a .txt file is just a file, not a URL list.
    assert str(root / "sub/notes.txt") in labels
    assert not any(".hidden" in label or ".e.jpg" in label for label in labels)


def test_globs_named_files_and_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    found = expand([str(root / "**" / "*.webp"), str(root / "a.jpg"), str(root)])
    assert _labels(found.sources) == [
        str(root / "sub/deeper/c.webp"),
        str(root / "a.jpg"),
        str(root / "sub/b.PNG"),
    ]
    # Reports show paths as they were named; the journal gets them absolute, once.
    relative = expand(["photos/a.jpg", str(root / "a.jpg"), "photos/sub/../a.jpg"]).sources
    assert [(s.label, s.identity()["source"]) for s in relative] == [
        ("photos/a.jpg", str(root / "a.jpg"))
    ]
    # A named file is taken whatever its extension.
    assert _labels(expand([str(root / "readme.md")]).sources) == [str(root / "readme.md")]
    with pytest.raises(UsageError, match="no file matches"):
        expand([str(root / "*.gif")])
    with pytest.raises(UsageError, match="no such file or folder"):
        expand([str(tmp_path / "nope")])


def test_url_list_with_comments_and_bad_lines(tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(
        "# holiday pictures\n"
        "https://example.com/a.jpg\n"
        "\n"
        "   http://example.com/b.png  \n"
        "ftp://example.com/c.jpg\n"
        "https://example.com/a.jpg\n"
    )
    found = expand([str(listing)])
    assert found.sources == [
        UrlSource("https://example.com/a.jpg"),
        UrlSource("http://example.com/b.png"),
    ]
    assert [(p.label, p.reason) for p in found.problems] == [
        (f"{listing}:5", "not an http(s) URL: ftp://example.com/c.jpg")
    ]
    assert found.sources[0].identity() == {
        "source": "https://example.com/a.jpg",
        "size": None,
        "version": None,
    }


async def test_s3_prefix(moto_s3_endpoint: str) -> None:
    bucket = unique_bucket("cli")
    s3 = boto3.client("s3", endpoint_url=moto_s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for key, data in {
        "photos/a.jpg": b"aaa",
        "photos/2024/b.png": b"bb",
        "photos/list.csv": b"x",
        "other/c.jpg": b"c",
    }.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)

    found = expand([f"s3://{bucket}/photos/"], s3_endpoint_url=moto_s3_endpoint)
    assert sorted(_labels(found.sources)) == [
        f"s3://{bucket}/photos/2024/b.png",
        f"s3://{bucket}/photos/a.jpg",
    ]
    source = next(s for s in found.sources if s.label.endswith("a.jpg"))
    assert isinstance(source, S3Source)
    assert await source.read() == b"aaa"
    assert source.identity()["size"] == 3 and source.identity()["version"]
    everything = expand([f"s3://{bucket}"], all_files=True, s3_endpoint_url=moto_s3_endpoint)
    assert len(everything.sources) == 4
    with pytest.raises(UsageError, match="cannot list"):
        expand([f"s3://{unique_bucket('missing')}/x"], s3_endpoint_url=moto_s3_endpoint)
    with pytest.raises(UsageError, match="name a bucket"):
        expand(["s3:///x"], s3_endpoint_url=moto_s3_endpoint)
