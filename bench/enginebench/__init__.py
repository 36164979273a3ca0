"""The engine benchmark's parts; `bench/engine.py` runs them."""
