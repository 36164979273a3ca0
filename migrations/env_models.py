"""Import every domain's models so `Base.metadata` knows every table."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("partners", "gateway", "billing", "moderation")


def import_all_models() -> None:
    """Import every `models` module under the domain packages."""
    for domain in DOMAINS:
        if (ROOT / domain / "models.py").exists():
            importlib.import_module(f"{domain}.models")
        for info in pkgutil.walk_packages([str(ROOT / domain)], prefix=f"{domain}."):
            if info.name.rsplit(".", 1)[-1] == "models":
                importlib.import_module(info.name)
