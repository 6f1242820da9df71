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


def spy_on_drafts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes libjpeg was set to decode at, appended as decode_image drafts."""
    drafted: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: Any) -> Any:
        result = original(self, mode, size)
        if result is not None:
            drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return drafted


def test_large_jpeg_is_decoded_with_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    drafted = spy_on_drafts(monkeypatch)
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


# -- search queries: decoded only as far as the embedder looks (ImageLimits.for_query) --

QUERY = ImageLimits().for_query(224)


def photo_jpeg(seed: int, width: int, height: int, crop: int = 0, quality: int = 90) -> bytes:
    """Smooth content plus noise, like a photo; `crop` trims a border (a query that is
    not byte for byte an indexed image)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    smooth = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 13, (height, width, 3))
    pixels = np.clip(np.asarray(smooth, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).crop((crop, crop, width - crop, height - crop))
    return encode(image, "JPEG", quality=quality)


@pytest.mark.parametrize(
    ("width", "height", "shape"),
    [
        (640, 480, (224, 298, 3)),  # shorter side 224; longer truncated as transformers does
        (480, 640, (298, 224, 3)),
        (500, 500, (224, 224, 3)),
        (200, 150, (150, 200, 3)),  # never enlarged
        (1200, 300, (128, 512, 3)),  # elongated: model_side binds, as for a stored image
    ],
)
def test_query_shorter_side_is_the_embedders_input_side(
    width: int, height: int, shape: tuple[int, int, int]
) -> None:
    data = photo_jpeg(0, width, height)
    query, stored = decode_image(data, QUERY), decode_image(data, ImageLimits())
    assert query.pixels.shape == shape
    assert_compact(query, 512)
    assert (query.width, query.height, query.sha256) == (width, height, stored.sha256)
    if width == 1200:
        assert query.pixels.shape == stored.pixels.shape


def test_query_of_an_unknown_input_side_is_decoded_as_a_stored_image() -> None:
    assert ImageLimits().for_query(None) == ImageLimits()
    with pytest.raises(ValueError, match="short_side"):
        ImageLimits(short_side=0)


def test_query_jpeg_draft_is_chosen_for_the_query_size(monkeypatch: pytest.MonkeyPatch) -> None:
    drafted = spy_on_drafts(monkeypatch)
    data = encode(gradient(4000, 3000), "JPEG", quality=80)
    assert decode_image(data, ImageLimits()).pixels.shape == (384, 512, 3)
    query = decode_image(data, QUERY)
    assert query.pixels.shape == (224, 298, 3)
    # 1/2 scale for a stored image (1/4 would leave 1000 < 2 x 512), 1/4 for a query:
    # still at least twice its size (1/8, 500 x 375, would not be) before the resize.
    assert drafted == [(2000, 1500), (1000, 750)]


def test_rotated_query_keeps_its_orientation() -> None:
    array = np.zeros((480, 640, 3), np.uint8)
    array[:, :320] = (255, 0, 0)  # left half red
    array[:, 320:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(Image.fromarray(array), "JPEG", exif=exif, quality=95), QUERY)
    assert decoded.pixels.shape == (298, 224, 3)
    top, bottom = decoded.pixels[10, 112], decoded.pixels[-10, 112]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_query_pixels_are_what_the_seeds_processor_computes_on_the_full_image() -> None:
    """The query's one resize is CLIP's own (shortest side 224, bicubic), so the
    embedder's resize is an exact copy it skips and the model sees what the Hugging
    Face processor makes of the whole decoded image; a stored image differs (LANCZOS
    to 512 first) by a level or two."""
    import torch
    from transformers import CLIPImageProcessor

    from deployments.model_loading import Placement
    from deployments.preprocessing import PixelRecipe, TensorPreprocessor, image_input_side

    processor = CLIPImageProcessor()
    side = image_input_side(processor)
    assert side == 224
    tensors = TensorPreprocessor(
        PixelRecipe.of(processor), Placement(torch.device("cpu"), torch.float32)
    )
    half_level = 0.5 / 255 / min(processor.image_std)
    for seed, (width, height) in enumerate([(640, 480), (480, 640), (1600, 1200)]):
        data = photo_jpeg(seed, width, height)
        full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        expected = processor(images=[full], return_tensors="pt")["pixel_values"]
        query = tensors([decode_image(data, ImageLimits().for_query(side)).pixels])
        stored = tensors([decode_image(data, ImageLimits()).pixels])
        assert query.shape == expected.shape == (1, 3, 224, 224)
        if width == 1600:  # decoded at 1/2 scale by libjpeg: a level or two off, no more
            assert float((query - expected).abs().mean()) < half_level
        else:
            assert float((query - expected).abs().max()) < half_level
        assert float((stored - expected).abs().max()) > half_level


def test_query_decoded_for_the_embedder_ranks_as_the_stored_size(tiny_clip_dir: Any) -> None:
    """A small index with the tiny CLIP: queries (cropped, recompressed copies of the
    indexed photos) rank the index the same, decoded the fast way or at 512."""
    from deployments.embedder import DualEncoderEmbedder
    from deployments.settings import EmbedderSettings, ModelSettings

    embedder = DualEncoderEmbedder(
        EmbedderSettings(model=ModelSettings(model_id=str(tiny_clip_dir), dtype="float32"))
    )
    side = embedder.info().input_side
    assert side == 32
    fast = ImageLimits().for_query(side)
    sizes = [(640, 480), (480, 640), (800, 600), (1600, 1200)]
    indexed = [photo_jpeg(seed, *sizes[seed % 4]) for seed in range(12)]
    queries = [photo_jpeg(seed, *sizes[seed % 4], crop=12, quality=60) for seed in range(12)]

    def vectors(images: list[bytes], limits: ImageLimits) -> np.ndarray:
        decoded = [decode_image(data, limits).pixels for data in images]
        return np.stack(embedder.embed_images(decoded))

    index = vectors(indexed, ImageLimits())
    at_512, fast_query = vectors(queries, ImageLimits()), vectors(queries, fast)
    assert decode_image(queries[0], fast).pixels.shape == (32, 43, 3)  # from 616 x 456
    ranked_512 = np.argsort(-(at_512 @ index.T), axis=1)
    ranked_fast = np.argsort(-(fast_query @ index.T), axis=1)
    assert (ranked_fast[:, 0] == np.arange(12)).all()
    np.testing.assert_array_equal(ranked_fast[:, :5], ranked_512[:, :5])
    assert float((fast_query * at_512).sum(axis=1).min()) > 0.999
