"""Decode untrusted image bytes once, with limits, into what the models need.

Pure and CPU-bound: callers run :func:`decode_image` in a worker thread. Nothing here
reads or changes PIL's process-wide settings (``MAX_IMAGE_PIXELS``,
``LOAD_TRUNCATED_IMAGES``): several threads decode at once, and our limits come from
:class:`ImageLimits`, not from globals another module could have changed.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ingress.core.errors import (
    ImageTooLarge,
    IntakeError,
    InvalidImage,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ingress.settings import IntakeArgs

MiB = 1024 * 1024

# PIL format name -> canonical MIME type. MPO (multi-picture JPEG, as written by many
# cameras) is what PIL's JPEG opener returns for such files; it is a JPEG to clients.
_CONTENT_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# Passed to Image.open so that PIL never even tries its other plugins (ICO, PSD, EPS,
# ...), whose parsers are a larger attack surface than we need.
_PIL_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Magic numbers of the accepted formats. Bytes that start like one of these but that PIL
# cannot open are a broken image of a format we take (400), not a foreign format (415).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)

# What PIL's decoders raise on corrupt or truncated input. MemoryError is deliberately
# absent: with the pixel cap enforced it means the server is in trouble, not the client.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255)
# JPEG draft decodes at 1/2, 1/4 or 1/8 scale in the IDCT, which is nearly free; keeping
# at least twice the target size before the final resize matches what Image.thumbnail
# does with its default reducing_gap, so quality is not traded away.
_DRAFT_HEADROOM = 2


@dataclass(frozen=True)
class ImageLimits:
    """What one decode may cost; every cap is checked before the expensive step."""

    max_bytes: int = 20 * MiB
    max_pixels: int = 40_000_000
    # More frames than this (GIF, WebP, TIFF, APNG, MPO) is refused even though only the
    # first is decoded: such files are almost always abuse, and counting is not free.
    max_frames: int = 1000
    # Longest side of the compact image handed to the model deployments.
    model_side: int = 512
    # Set for a search query, which is never stored, thumbnailed or captioned: shrink
    # further until the shorter side is this, the embedder's input side (all it looks
    # at), so the decode, the resize and the array sent to the embedder are smaller.
    short_side: int | None = None
    # The final resize. LANCZOS for stored images (captioner and embedder both resize
    # them again); a query's resize is the embedder's own, so it uses the embedder's
    # filter, bicubic (CLIP, SigLIP), which is also ~1.6x cheaper (benchmarks/RESULTS.md).
    resample: Image.Resampling = Image.Resampling.LANCZOS

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_frames", "model_side"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ImageLimits.{name} must be positive")
        if self.short_side is not None and self.short_side <= 0:
            raise ValueError("ImageLimits.short_side must be positive")

    def for_query(self, input_side: int | None) -> ImageLimits:
        """The limits of a search query for an embedder whose input's shorter side is
        `input_side`; unknown (None), a query is decoded as a stored image is."""
        if input_side is None:
            return self
        return replace(self, short_side=input_side, resample=Image.Resampling.BICUBIC)

    def scale(self, width: int, height: int) -> float:
        """The factor an image of this size is scaled by (1 or more: kept as it is)."""
        scale = self.model_side / max(width, height)
        if self.short_side is not None:
            scale = min(scale, self.short_side / min(width, height))
        return scale

    def query_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The (width, height) a query is resized to, exactly as the embedder's own
        resize computes it (transformers truncates the longer side), so that the
        embedder's resize is a copy it skips; None where model_side binds instead
        (a very elongated image, shrunk as a stored one is) or nothing is shrunk."""
        if self.short_side is None or self.short_side >= min(width, height):
            return None
        short, long = sorted((width, height))
        new_long = int(self.short_side * long / short)
        if new_long > self.model_side:
            return None
        return (new_long, self.short_side) if width >= height else (self.short_side, new_long)

    @classmethod
    def of(cls, intake: IntakeArgs) -> ImageLimits:
        """The limits `args.intake` sets, the same for the service and every tool."""
        return cls(
            max_bytes=intake.max_upload_bytes,
            max_pixels=intake.max_pixels,
            max_frames=intake.max_frames,
            model_side=intake.model_image_side,
        )


@dataclass(frozen=True)
class DecodedImage:
    """An accepted image: its original bytes, their identity, and a compact RGB copy."""

    data: bytes = field(repr=False)
    sha256: str
    content_type: str
    # Of the original image, after EXIF orientation is applied (what a viewer shows).
    width: int
    height: int
    # RGB uint8, H x W x 3, C-contiguous, longest side <= ImageLimits.model_side.
    # Excluded from ==/hash: arrays have no truth value, and sha256 already identifies it.
    pixels: np.ndarray = field(repr=False, compare=False)

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def decode_image(
    data: bytes, limits: ImageLimits, declared_content_type: str | None = None
) -> DecodedImage:
    """Validate and decode untrusted bytes; raise an :class:`IntakeError` on refusal.

    ``declared_content_type`` (from an upload or an HTTP response) is never trusted; the
    format is detected from the bytes, and the declared type only improves the message.
    """
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    if not data:
        raise InvalidImage("image is empty (0 bytes)")
    try:
        return _decode(data, limits)
    except IntakeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own bomb check runs inside Image.open (and GIF/TIFF frame setup) before
        # ours can; it only fires for sizes far above a sane max_pixels, so report it the
        # same way. It raises the Warning only when warnings are turned into errors.
        raise ImageTooLarge(f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data, declared_content_type) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {exc}") from exc


def _decode(data: bytes, limits: ImageLimits) -> DecodedImage:
    with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
        fmt = im.format or ""
        content_type = _CONTENT_TYPES.get(fmt)
        if content_type is None:  # only if PIL maps a format name we did not expect
            raise UnsupportedMediaType(f"image format {fmt!r} is not accepted")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"image has no pixels ({width}x{height})")
        # Header dimensions only: nothing has been decoded or allocated yet.
        if width * height > limits.max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels; "
                f"the limit is {limits.max_pixels}"
            )
        if _too_many_frames(im, data, limits.max_frames):
            raise ImageTooLarge(f"image has more than {limits.max_frames} frames")

        orientation = _exif_orientation(im)
        if fmt in ("JPEG", "MPO"):
            _draft_jpeg(im, limits)
        im.load()  # frame 0 only; raises on truncated data (LOAD_TRUNCATED_IMAGES is off)
        image: Image.Image = im
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        compact = _compact_rgb(image, limits)
        pixels = np.ascontiguousarray(np.array(compact, dtype=np.uint8))

    if orientation in (5, 6, 7, 8):  # these orientations rotate by 90 degrees
        width, height = height, width
    return DecodedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=content_type,
        width=width,
        height=height,
        pixels=pixels,
    )


def _unidentified(data: bytes, declared: str | None) -> IntakeError:
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return InvalidImage(f"bytes start like {name} but cannot be read as an image")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return InvalidImage("bytes start like WEBP but cannot be read as an image")
    said = f" (declared {declared})" if declared else ""
    return UnsupportedMediaType(
        f"not an accepted image format{said}; accepted: JPEG, PNG, WebP, GIF, BMP, TIFF"
    )


def _too_many_frames(im: Image.Image, data: bytes, max_frames: int) -> bool:
    """True if the file has more than ``max_frames`` frames, without decoding any."""
    if im.format == "GIF":
        return _gif_frames_exceed(data, max_frames)
    if im.format == "TIFF":
        # PIL's TIFF n_frames walks every IFD; seeking to frame max_frames walks only that
        # far (tags, no pixel data). A separate handle keeps `im` on frame 0, untouched.
        with Image.open(io.BytesIO(data), formats=("TIFF",)) as probe:
            try:
                probe.seek(max_frames)
            except EOFError:
                return False
            return True
    # PNG (APNG acTL), WebP and MPO declare their frame count in a header: cheap.
    return int(getattr(im, "n_frames", 1)) > max_frames


def _gif_frames_exceed(data: bytes, max_frames: int) -> bool:
    """Count GIF image descriptors, stopping as soon as there are too many.

    PIL's GIF n_frames parses every frame in Python with no early exit: a 20 MiB file of
    14-byte frames costs seconds. This walk stops after max_frames + 1 descriptors.
    """
    n = len(data)
    if n < 13:
        return False
    pos = 13  # header (6) + logical screen descriptor (7)
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    frames = 0
    while pos < n:
        block = data[pos]
        pos += 1
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:  # image descriptor
            if pos + 9 > n:
                break
            flags = data[pos + 8]
            pos += 9
            if flags & 0x80:  # local colour table
                pos += 3 << ((flags & 7) + 1)
            pos += 1  # LZW minimum code size
            frames += 1
            if frames > max_frames:
                return True
        elif block == 0x21:  # extension: label byte, then sub-blocks
            pos += 1
        else:
            continue  # PIL skips stray bytes between blocks; count the way it reads
        while pos < n:  # data sub-blocks, terminated by a zero-length block
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
    return False


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        # Broken EXIF is common in otherwise fine photos; it is no reason to refuse.
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _draft_jpeg(im: Image.Image, limits: ImageLimits) -> None:
    """Let libjpeg decode at 1/2..1/8 scale when only a small image is needed.

    Must run before load(); it changes im.size, so callers read the original size first.
    Before EXIF rotation, which swaps both the sides and the box: the scale is the same.
    """
    width, height = im.size
    k = _DRAFT_HEADROOM * limits.scale(width, height)
    if k >= 1:
        return
    im.draft(None, (max(1, math.ceil(width * k)), max(1, math.ceil(height * k))))


def _compact_rgb(image: Image.Image, limits: ImageLimits) -> Image.Image:
    """Any PIL mode -> RGB shrunk as `limits` say (alpha flattened onto white)."""
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit samples use the full 0..65535 range; PIL's convert would clip at 255.
        image = Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    elif mode in ("I", "F"):
        # Range unknown (32-bit ints, floats): shrink in full precision first, then map.
        image = _shrink(image, limits)
        image = Image.fromarray(_stretch_to_uint8(np.asarray(image)))
    elif mode == "La":
        image = image.convert("LA")  # PIL converts premultiplied La only to LA

    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")  # also applies palette / tRNS transparency
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV

    return _shrink(image, limits)


def _shrink(image: Image.Image, limits: ImageLimits) -> Image.Image:
    """One resize (after an integer pre-reduction, reducing_gap 2); never enlarges."""
    size = limits.query_size(*image.size)
    if size is None:
        image.thumbnail((limits.model_side, limits.model_side), limits.resample)
        return image
    return image.resize(size, limits.resample, reducing_gap=_DRAFT_HEADROOM)


def _stretch_to_uint8(a: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0 and a.dtype.kind == "f":
        values = values * 255.0  # the usual float convention: 0..1
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        values = values / 257.0  # 16-bit data stored in a wider type
    elif hi > lo:
        values = (values - lo) * (255.0 / (hi - lo))
    else:
        values = np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
