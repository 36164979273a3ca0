"""A model that does nothing: what remains of a request's latency is the platform's."""

from engine import Input, Model


class Predictor(Model):
    def predict(self, value: int = Input(default=0)) -> dict:
        return {"value": value}
