"""decode_image: formats, orientation, modes, and every refusal, on images made here."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from ingress.core.errors import (
    ImageTooLarge,
    InvalidImage,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ingress.core.imaging import DecodedImage, ImageLimits, decode_image
from ingress.http.errors import to_api_error

SMALL = ImageLimits(model_side=128)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, axis=1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 90)], axis=-1))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def assert_compact(decoded: DecodedImage, side: int) -> None:
    pixels = decoded.pixels
    assert pixels.dtype == np.uint8
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    assert max(pixels.shape[:2]) <= side
    assert pixels.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_accepted_formats_round_trip(fmt: str, content_type: str) -> None:
    data = encode(gradient(300, 200), fmt)
    decoded = decode_image(data, SMALL, declared_content_type="application/octet-stream")
    assert decoded.content_type == content_type
    assert (decoded.width, decoded.height) == (300, 200)
    assert decoded.data == data
    assert decoded.size_bytes == len(data)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert_compact(decoded, 128)
    assert decoded.pixels.shape == (85, 128, 3)
    # Content survives: the gradient runs dark to bright left to right in red.
    assert decoded.pixels[:, :10, 0].mean() < 60 < 200 < decoded.pixels[:, -10:, 0].mean()


def test_declared_type_is_not_trusted() -> None:
    data = encode(gradient(30, 20), "PNG")
    assert decode_image(data, SMALL, declared_content_type="image/jpeg").content_type == (
        "image/png"
    )


def test_small_image_is_not_enlarged() -> None:
    decoded = decode_image(encode(gradient(40, 30), "PNG"), SMALL)
    assert decoded.pixels.shape == (30, 40, 3)


def test_large_jpeg_is_decoded_with_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    drafted: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: Any) -> Any:
        result = original(self, mode, size)
        if result is not None:
            drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = encode(gradient(2400, 1600), "JPEG", quality=80)
    decoded = decode_image(data, SMALL)
    # libjpeg decoded at 1/8 scale, yet the record keeps the original size.
    assert drafted == [(300, 200)]
    assert (decoded.width, decoded.height) == (2400, 1600)
    assert decoded.pixels.shape == (85, 128, 3)


def test_exif_orientation_6_rotates() -> None:
    array = np.zeros((200, 300, 3), np.uint8)
    array[:, :150] = (255, 0, 0)  # left half red
    array[:, 150:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(Image.fromarray(array), "JPEG", exif=exif, quality=95)

    decoded = decode_image(data, SMALL)
    assert (decoded.width, decoded.height) == (200, 300)
    assert decoded.pixels.shape == (128, 85, 3)
    top, bottom = decoded.pixels[10, 42], decoded.pixels[-10, 42]
    assert top[0] > 200 and top[2] < 60  # the left edge is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (30, 20), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 15, 20))  # left half: index 0, declared transparent below
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("name", "data", "left", "right"),
    [
        ("CMYK", encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"), "red", "red"),
        (
            "I;16",
            encode(Image.fromarray(np.full((20, 30), 32768, np.uint16)), "PNG"),
            "grey",
            "grey",
        ),
        ("P+transparency", encode(_palette_with_transparency(), "PNG"), "white", "blue"),
        ("RGBA", encode(Image.new("RGBA", (30, 20), (255, 0, 0, 0)), "PNG"), "white", "white"),
        ("LA", encode(Image.new("LA", (30, 20), (0, 255)), "PNG"), "black", "black"),
        ("1", encode(Image.new("1", (30, 20), 1), "PNG"), "white", "white"),
        (
            "F",
            encode(Image.fromarray(np.full((20, 30), 0.5, np.float32)), "TIFF"),
            "grey",
            "grey",
        ),
        (
            "I",
            encode(Image.fromarray(np.full((20, 30), 32896, np.int32)), "TIFF"),
            "grey",
            "grey",
        ),
    ],
)
def test_modes_become_rgb(name: str, data: bytes, left: str, right: str) -> None:
    colours = {
        "red": (255, 0, 0),
        "blue": (0, 0, 255),
        "white": (255, 255, 255),
        "black": (0, 0, 0),
        "grey": (128, 128, 128),
    }
    decoded = decode_image(data, SMALL)
    assert_compact(decoded, 128)
    assert decoded.pixels.shape == (20, 30, 3)
    for column, expected in ((2, colours[left]), (27, colours[right])):
        got = decoded.pixels[10, column].astype(int)
        assert np.abs(got - expected).max() <= 8, (name, column, got.tolist())


def test_gif_first_frame_is_used() -> None:
    frames = [Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_image(data, SMALL)
    assert decoded.content_type == "image/gif"
    assert decoded.pixels[10, 15].tolist() == [255, 0, 0]


def test_zero_bytes_are_invalid() -> None:
    with pytest.raises(InvalidImage):
        decode_image(b"", SMALL)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_invalid(fmt: str) -> None:
    data = encode(gradient(300, 200), fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], SMALL)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00",  # signature, then nothing usable
        b"\xff\xd8\xff\xe0" + b"\x00" * 40,  # JPEG start, garbage after
        b"GIF89a\x01",
    ],
)
def test_broken_headers_of_accepted_formats_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, SMALL)


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        b"<!doctype html><html><body><img src=x></body></html>",
        b"just some text, not an image\n",
        b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
        encode(Image.new("RGB", (32, 32)), "ICO"),
    ],
    ids=["svg", "html", "text", "pdf", "ico"],
)
def test_foreign_formats_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_image(data, SMALL, declared_content_type="image/png")
    assert to_api_error(info.value).status == 415
    assert info.value.code == "unsupported_media_type"


def test_size_cap_comes_first() -> None:
    limits = ImageLimits(max_bytes=100)
    with pytest.raises(PayloadTooLarge):
        decode_image(b"x" * 101, limits)  # not even looked at: 413, not 415


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (100_000, 100_000),  # far past PIL's own bomb threshold too
        (8_000, 8_000),  # 64 MP: under PIL's threshold, over our 40 MP default
    ],
)
def test_declared_pixel_count_is_checked_before_decoding(width: int, height: int) -> None:
    # The IDAT holds 16 bytes: had anything been decoded, this would fail as truncated
    # (InvalidImage), so ImageTooLarge shows the header check ran first.
    with pytest.raises(ImageTooLarge) as info:
        decode_image(png_declaring(width, height), ImageLimits())
    assert to_api_error(info.value).status == 413


def test_pixel_cap_comes_from_limits() -> None:
    data = encode(gradient(20, 20), "PNG")
    with pytest.raises(ImageTooLarge):
        decode_image(data, ImageLimits(max_pixels=399))
    assert decode_image(data, ImageLimits(max_pixels=400)).width == 20


def test_gif_bomb_logical_screen_is_refused() -> None:
    data = (
        b"GIF89a"
        + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0)  # screen, 2-colour palette
        + b"\x00\x00\x00\xff\xff\xff"
        + b","
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # one 1x1 frame
        + b"\x02\x02\x44\x01\x00;"
    )
    with pytest.raises(ImageTooLarge):
        decode_image(data, ImageLimits())


def _animated_gif(n: int) -> bytes:
    frames = [Image.new("L", (8, 8), (i * 37) % 256) for i in range(n)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20)


def test_gif_with_too_many_frames_is_refused() -> None:
    limits = ImageLimits(max_frames=5)
    assert decode_image(_animated_gif(5), limits).content_type == "image/gif"
    with pytest.raises(ImageTooLarge):
        decode_image(_animated_gif(6), limits)


def test_gif_frame_count_does_not_stop_at_many_thousands() -> None:
    # Hand-made: 5000 minimal frames (as a bomb would be built), under a 1000 limit.
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    data = (
        b"GIF89a"
        + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + frame * 5000
        + b";"
    )
    with pytest.raises(ImageTooLarge):
        decode_image(data, ImageLimits(max_frames=1000))


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP", "PNG"])
def test_other_multi_frame_formats_respect_max_frames(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), (i * 80, 0, 0)) for i in range(3)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    assert decode_image(data, ImageLimits(max_frames=3)).width == 8
    with pytest.raises(ImageTooLarge):
        decode_image(data, ImageLimits(max_frames=2))


def test_pil_global_state_is_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    decode_image(encode(gradient(30, 20), "JPEG"), SMALL)
    with pytest.raises(ImageTooLarge):
        decode_image(png_declaring(100_000, 100_000), SMALL)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="model_side"):
        ImageLimits(model_side=0)
