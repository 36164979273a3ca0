"""NSFW detection with NudeNet's bundled ONNX detector, run on one thread per call.

The package's own wrapper post-processes every anchor in a Python loop; only the best
score per body-part class is needed here, so the output is reduced with numpy instead.
"""

from __future__ import annotations

import functools
import os
import threading

import cv2
import numpy as np

LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
# What counts as sexual nudity; covered parts, faces, feet and bellies are recorded only.
EXPLICIT = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED",
            "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED")
INPUT_SIZE = 320


class NudeNetDetector:
    """One ONNX session, shared by every thread of the process."""

    def __init__(self, model_path: str | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        if model_path is None:
            import nudenet

            model_path = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.model_path = model_path

    @staticmethod
    def preprocess(rgb: np.ndarray) -> np.ndarray:
        """Pad to a square (right and bottom) and scale to 320, as NudeNet's own wrapper does.

        That wrapper ends up feeding the channels in BGR order; scores are kept identical
        to the package's, whose thresholds users know, so the same order is used here.
        """
        h, w = rgb.shape[:2]
        side = max(h, w)
        square = np.zeros((side, side, 3), np.uint8)
        square[:h, :w] = rgb[:, :, ::-1]
        small = cv2.resize(square, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
        return (small.astype(np.float32) * (1.0 / 255.0)).transpose(2, 0, 1)[None]

    def class_scores(self, rgb: np.ndarray) -> dict[str, float]:
        """The best detection score of each body-part class in the image."""
        output = self.session.run(None, {self.input_name: self.preprocess(rgb)})[0][0]
        scores = output[4:]  # (classes, anchors)
        # Each anchor is one box labelled with its best class, as the detector reports it.
        best_class = scores.argmax(axis=0)
        best_score = scores.max(axis=0)
        per_class = np.zeros(len(LABELS), np.float32)
        np.maximum.at(per_class, best_class, best_score)
        return {label: float(per_class[i]) for i, label in enumerate(LABELS)}


def explicit_score(scores: dict[str, float]) -> float:
    """The sexual-nudity score: the best of the explicit classes."""
    return max(scores.get(c, 0.0) for c in EXPLICIT)


_lock = threading.Lock()


@functools.cache
def _detector(model_path: str, threads: int) -> NudeNetDetector:
    return NudeNetDetector(model_path or None, threads=threads)


def get_detector(model_path: str = "", threads: int = 1) -> NudeNetDetector:
    """The process-wide detector for a model file (loaded once, on first use)."""
    with _lock:
        return _detector(model_path, threads)
