"""Checking one image: bounded before decoding, fully decoded, thumbnailed."""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path

from .base import THUMBNAIL_SIZE, ImageMeta, ImportLimits

def pillow_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb limit follow mmviz's (MMVIZ_MAX_PIXELS): Pillow
    refuses images over twice Image.MAX_IMAGE_PIXELS on open, with a message that names no
    file, and a higher MMVIZ_MAX_PIXELS must lift it too. mmviz checks its own bound first."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS != max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def check_image(source: Path | bytes, limits: ImportLimits) -> tuple[ImageMeta | None, str, str]:
    """Open, bound and fully decode an image; return (meta, "", "") or (None, reason, detail).

    The pixel count is read from the header and checked before any decoding, so a
    decompression bomb never allocates its pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if limits.confine_to is not None and not isinstance(source, bytes):
        # An uploaded table must not reach files elsewhere on the server (/home/..., ../..).
        try:
            Path(os.path.realpath(source)).relative_to(os.path.realpath(limits.confine_to))
        except ValueError:
            return None, "missing file", f"{source} lies outside the uploaded archive"
    try:
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if size > limits.max_image_bytes:
            return None, "image too large", (f"{_label(source)}: {size:,} bytes > limit {limits.max_image_bytes:,}; "
                                             "raise MMVIZ_MAX_IMAGE_BYTES to allow")
        data = source if isinstance(source, bytes) else source.read_bytes()
    except FileNotFoundError:
        return None, "missing file", f"{source} does not exist"
    except ValueError:  # a NUL byte in the path: no such file can exist
        return None, "missing file", f"{str(source)!r} is not a valid file path"
    except OSError as e:
        return None, "unreadable image", f"{source}: {e.strerror or e}"
    pillow_pixel_limit(limits.max_pixels)
    try:
        # Our own bound, checked first, replaces Pillow's warning between 1x and 2x its limit.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            w, h = im.size
            if w * h > limits.max_pixels:
                return None, "image too large", (
                    f"{_label(source)}: {w}x{h} = {w * h:,} pixels > limit {limits.max_pixels:,}; raise MMVIZ_MAX_PIXELS to allow")
            fmt = im.format or "?"
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: a quarter turn
                w, h = h, w  # report the size people see, as the embedding engine will
            im.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))  # JPEG: decode at reduced scale
            im = ImageOps.exif_transpose(im).convert("RGB")  # full decode: truncated/corrupt files fail here
            im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow refused on open
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(pixels.group(1)):,} pixels" if pixels else "its pixel count"
        return None, "image too large", (f"{_label(source)}: {what} > limit {limits.max_pixels:,}; "
                                         "raise MMVIZ_MAX_PIXELS to allow")
    except UnidentifiedImageError:
        return None, "unreadable image", f"{_label(source)}: not an image format Pillow recognises"
    except (OSError, SyntaxError, ValueError) as e:
        return None, "unreadable image", f"{_label(source)}: {e or type(e).__name__}"
    return ImageMeta(hashlib.sha256(data).hexdigest(), w, h, fmt, buf.getvalue()), "", ""


def _label(source: Path | bytes) -> str:
    return source.name if isinstance(source, Path) else f"{len(source):,} bytes of image data"
