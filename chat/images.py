"""Photo checks and re-encoding with Pillow (blocking: run it on a thread, see chat/attachments.py).

An upload is accepted only if Pillow decodes it completely as JPEG, PNG, WebP or GIF, whatever
its name or declared type says. What is stored is never the uploaded bytes: the decoded pixels
are encoded again, so EXIF (GPS, camera serials), XMP, ICC profiles, comments and anything
appended after the image (a phone's motion-photo video, say) are gone. The EXIF orientation is
applied to the pixels first, so a photo stays upright without its EXIF. A "polyglot", an image
that is also a ZIP archive, an HTML/SVG/PHP page or a PDF, is refused outright.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from dataclasses import dataclass

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from chat.errors import Invalid

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
MAX_PIXELS = 40_000_000  # one frame; a 10 MB JPEG of more is almost surely a decompression bomb
MAX_FRAMES = 200  # animated GIF/WebP frames
MAX_TOTAL_PIXELS = 200_000_000  # all frames together
THUMB_MAX_PX = 320

# Pillow raises DecompressionBombError past twice this and warns past it; the explicit check in
# `_open` refuses anything past it before decoding (warnings filters are process-wide, not
# thread-safe, so they are not relied on).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageRejected(Invalid):
    """An upload that is not an acceptable image; `reason` says which check refused it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def to_wire(self) -> dict[str, str]:
        return {**super().to_wire(), "reason": self.reason}


@dataclass(frozen=True)
class Processed:
    content_type: str
    width: int
    height: int
    data: bytes
    thumb_content_type: str
    thumb_width: int
    thumb_height: int
    thumb: bytes


# What makes an image a polyglot: markup a browser or PHP would run, a PDF header. (A ZIP is
# found by its end-of-central-directory record, the way ZIP readers find it: zipfile.is_zipfile.)
_MARKUP = re.compile(rb"<(?:html|script|svg|iframe|body|object|embed|!doctype\s+html)[\s>/]|<\?php|%PDF-",
                     re.IGNORECASE)


def _polyglot(data: bytes) -> str | None:
    """What else the file is besides an image ("ZIP", "HTML", "PDF"), or None."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        return "ZIP"
    found = _MARKUP.search(data)
    if found is None:
        return None
    return "PDF" if found.group().startswith(b"%") else "HTML"


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ImageRejected("too_many_pixels", f"the image has more than {MAX_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise ImageRejected("unsupported_format", "not a JPEG, PNG, WebP or GIF image") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageRejected("corrupt", "the image cannot be read") from None
    if im.format == "MPO":  # a phone's multi-picture JPEG: its first picture is the photo
        im.format = "JPEG"
    if im.format not in FORMATS:
        raise ImageRejected("unsupported_format", "not a JPEG, PNG, WebP or GIF image")
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageRejected("corrupt", "the image has no pixels")
    if width * height > MAX_PIXELS:
        raise ImageRejected("too_many_pixels", f"the image has more than {MAX_PIXELS} pixels")
    frames = 1 if im.format == "JPEG" else getattr(im, "n_frames", 1)
    if frames > MAX_FRAMES or frames * width * height > MAX_TOTAL_PIXELS:
        raise ImageRejected("too_many_pixels", "the animation has too many frames")
    return im


def process(data: bytes) -> Processed:
    """Decode, check and re-encode an upload; raises ImageRejected."""
    im = _open(data)
    other = _polyglot(data)
    if other is not None:
        raise ImageRejected("polyglot", f"the file is an image and a {other} document at once (a polyglot)")
    fmt = im.format or ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            frames, durations = _decode(im)
    except ImageRejected:
        raise
    except Image.DecompressionBombError:
        raise ImageRejected("too_many_pixels", f"the image has more than {MAX_PIXELS} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, MemoryError):
        # "image file is truncated", broken chunks, bad Huffman tables...
        raise ImageRejected("truncated", "the image is truncated or corrupt") from None
    first = frames[0]
    out = io.BytesIO()
    if len(frames) > 1:
        first.save(out, fmt, save_all=True, append_images=frames[1:], duration=durations,
                   loop=int(im.info.get("loop", 0)), **({"lossless": False} if fmt == "WEBP" else {}))
    elif fmt == "JPEG":
        first.save(out, "JPEG", quality=88, optimize=True)
    elif fmt == "PNG":
        first.save(out, "PNG", optimize=True)
    elif fmt == "WEBP":
        first.save(out, "WEBP", quality=85)
    else:
        first.save(out, "GIF")
    thumb = first.copy()
    thumb.thumbnail((THUMB_MAX_PX, THUMB_MAX_PX))
    opaque = thumb.mode in ("RGB", "L")
    thumb_out = io.BytesIO()
    if opaque:
        thumb.save(thumb_out, "JPEG", quality=80)
    else:
        thumb.convert("RGBA").save(thumb_out, "PNG", optimize=True)
    return Processed(CONTENT_TYPES[fmt], first.width, first.height, out.getvalue(),
                     "image/jpeg" if opaque else "image/png", thumb.width, thumb.height, thumb_out.getvalue())


def _decode(im: Image.Image) -> tuple[list[Image.Image], list[int]]:
    """Fully decoded frames as new images (no info, so no metadata is carried into the output),
    upright per EXIF orientation, in modes every output format takes."""
    fmt = im.format
    frames: list[Image.Image] = []
    durations: list[int] = []
    for frame in ImageSequence.Iterator(im):
        if fmt == "JPEG" and frames:
            break  # MPO: the other pictures (depth maps, previews) are dropped
        frame.load()
        durations.append(int(frame.info.get("duration", 100) or 100))
        pixels = ImageOps.exif_transpose(frame) if len(frames) == 0 else frame
        mode = pixels.mode
        if fmt == "JPEG":
            target = "L" if mode in ("L", "1", "I;16", "I") else "RGB"
        elif fmt == "GIF" and getattr(im, "n_frames", 1) == 1:
            target = mode if mode in ("P", "L") else "RGBA"
        else:
            target = "RGBA" if mode in ("RGBA", "LA", "P", "PA") or "transparency" in frame.info else "RGB"
        if fmt == "PNG" and mode in ("L", "RGB", "RGBA", "P"):
            target = mode if mode != "P" else "RGBA"
        converted = pixels.convert(target)
        fresh = Image.new(converted.mode, converted.size)
        if converted.mode == "P":
            fresh.putpalette(converted.getpalette() or [])
            if "transparency" in converted.info:
                fresh.info["transparency"] = converted.info["transparency"]
        fresh.paste(converted)
        frames.append(fresh)
    if len(frames) > 1 and any(f.size != frames[0].size for f in frames):
        raise ImageRejected("corrupt", "the animation's frames differ in size")
    return frames, durations
