"""Outputs: how a model's return value becomes files, JSON and billable units."""

from __future__ import annotations

import math
import mimetypes
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Prediction:
    """An output plus the billable units the model reports for it."""

    output: Any
    units: dict[str, float] | None = None


@dataclass
class Video:
    """A video file the model wrote, with its duration for `video_seconds` billing."""

    path: Path | str
    seconds: float
    fps: float | None = None


class OutputWriter:
    """Writes a model's outputs into one request's output directory and counts units."""

    def __init__(self, output_dir: Path, image_format: str = "png") -> None:
        self.output_dir = output_dir
        self.image_format = image_format
        self.images = 0
        self.megapixels = 0
        self.video_seconds = 0.0
        self._n = 0

    def _name(self, suffix: str) -> Path:
        self._n += 1
        return self.output_dir / f"output_{self._n}{suffix}"

    def convert(self, value: Any) -> Any:
        """JSON-able form of `value`; files become `{"$file": name, ...}` descriptors."""
        if isinstance(value, dict):
            return {str(k): self.convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.convert(v) for v in value]
        if isinstance(value, Video):
            self.video_seconds += float(value.seconds)
            return self._file(Path(value.path), extra={"seconds": value.seconds, "fps": value.fps})
        if isinstance(value, Path):
            return self._file(value)
        if _is_pil_image(value):
            return self._image(value)
        if type(value).__name__ == "ndarray":
            from PIL import Image

            return self._image(Image.fromarray(value))
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise TypeError(f"cannot return a {type(value).__name__} from predict()")

    def _image(self, image: Any) -> dict[str, Any]:
        fmt = self.image_format.lower()
        path = self._name("." + ("jpg" if fmt == "jpeg" else fmt))
        image.save(path, format=fmt.upper())
        width, height = image.size
        self.images += 1
        self.megapixels += math.ceil(width * height / 1_000_000)
        return {"$file": path.name, "content_type": f"image/{fmt}", "width": width, "height": height}

    def _file(self, source: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"predict() returned a path that is not a file: {source}")
        target = self._name(source.suffix)
        shutil.copyfile(source, target)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("image/"):
            self.images += 1
            try:
                from PIL import Image

                with Image.open(target) as im:
                    self.megapixels += math.ceil(im.size[0] * im.size[1] / 1_000_000)
            except Exception:  # noqa: BLE001 - an unreadable image is still a file output
                pass
        return {"$file": target.name, "content_type": ctype, **(extra or {})}

    def units(self, billable_unit: str, gpu_seconds: float) -> dict[str, float]:
        """Units counted from the outputs, for the declared billable unit and the rest."""
        return {
            "requests": 1,
            "images": self.images,
            "megapixels": self.megapixels,
            "video_seconds": round(self.video_seconds, 3),
            "gpu_seconds": round(gpu_seconds, 3),
        }


def _is_pil_image(value: Any) -> bool:
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(value).__mro__)
