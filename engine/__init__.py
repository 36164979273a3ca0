"""The mediagate engine: what a partner's model code sees inside its sandbox.

Importing `engine` stays light (no torch): the SDK is plain Python, and
`engine.optimize` loads the torch-based optimizer on first use.
"""

from engine.sdk import Input, Model, Prediction, Video

__all__ = ["Input", "Model", "Prediction", "Video", "optimize"]


def __getattr__(name: str):
    if name == "optimize":
        from engine.optimization import optimize

        return optimize
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
