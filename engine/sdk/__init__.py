"""The partner-facing SDK: subclass `Model`, declare inputs with `Input`, return outputs."""

from engine.sdk.io import Prediction, Video
from engine.sdk.model import Input, Model

__all__ = ["Input", "Model", "Prediction", "Video"]
