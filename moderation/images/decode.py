"""Safe reading of output files: type sniffing, size limits, reduced decoding, video frames.

Anything that cannot be read completely raises `UncheckableMedia`; the caller blocks it,
so a truncated or hostile file never passes unchecked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# Images are checked at this size: PDQ and the NSFW detector both work below it, and a
# JPEG can be decoded straight to it (DCT scaling), which is most of the speed.
WORK_SIZE = 512


class UncheckableMedia(Exception):
    """A file that cannot be checked (corrupt, truncated, too large, unknown type)."""


@dataclass(frozen=True)
class Frames:
    """Decoded RGB frames of one file, each at most WORK_SIZE on its long side."""

    kind: str
    frames: list[np.ndarray]
    width: int
    height: int
    total_frames: int = 1


def sniff(head: bytes, name: str = "") -> str:
    """The kind of a file from its first bytes: image, video, audio, text or unknown."""
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")):
        return "image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
            return "image"
        if brand in (b"M4A ", b"M4B "):
            return "audio"
        return "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"
    if head.startswith((b"ID3", b"fLaC", b"OggS")) or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio"
    if name.lower().endswith((".txt", ".json", ".md", ".csv", ".srt", ".vtt")):
        return "text"
    return "unknown"


def _reduce(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = WORK_SIZE / max(h, w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels are judged as shown on black, and their hidden colour is not
        # what the viewer sees; compositing keeps the check on the visible picture.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode_reduced(path: Path, width: int, height: int) -> np.ndarray:
    """Decode with OpenCV, which shrinks while decoding (a third faster than Pillow for PNG)."""
    factor = 1
    while factor < 8 and max(width, height) // (factor * 2) >= WORK_SIZE:
        factor *= 2
    bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), _REDUCED[factor])
    if bgr is None:
        raise UncheckableMedia("image cannot be decoded: the data is incomplete or corrupt")
    return _reduce(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def read_image(path: Path, *, max_pixels: int, max_frames: int = 8) -> Frames:
    """Decode an image (animated ones: up to `max_frames` sampled frames), reduced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width <= 0 or height <= 0 or width * height > max_pixels:
                    raise UncheckableMedia(f"image of {width}x{height} is over the checkable size")
                n = int(getattr(image, "n_frames", 1) or 1)
                if (image.format == "PNG" and n == 1 and image.mode in ("RGB", "L", "P")
                        and "transparency" not in image.info):
                    image.verify()  # chunk structure and CRCs: a truncated file stops here
                    return Frames("image", [_decode_reduced(path, width, height)], width, height, 1)
                picks = sorted({round(i * (n - 1) / max(1, max_frames - 1)) for i in range(min(n, max_frames))})
                frames = []
                for index in picks:
                    if n > 1:
                        image.seek(index)
                    elif image.format == "JPEG":
                        image.draft("RGB", (WORK_SIZE, WORK_SIZE))
                    image.load()
                    frames.append(_reduce(_to_rgb(image)))
    except UncheckableMedia:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
        raise UncheckableMedia(f"image cannot be decoded: {type(exc).__name__}: {exc}") from exc
    return Frames("image", frames, width, height, n)


def read_video(path: Path, *, samples: int, max_pixels: int) -> Frames:
    """Sample `samples` frames spread over a video, reduced."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UncheckableMedia("video cannot be opened")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > max_pixels:
            raise UncheckableMedia(f"video of {width}x{height} is over the checkable size")
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            raise UncheckableMedia("video has no frames")
        picks = sorted({round(i * (total - 1) / max(1, samples - 1)) for i in range(min(total, samples))})
        frames = []
        for index in picks:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, bgr = capture.read()
            if not ok or bgr is None:
                raise UncheckableMedia(f"video frame {index} of {total} cannot be decoded")
            frames.append(_reduce(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    finally:
        capture.release()
    return Frames("video", frames, width, height, total)
