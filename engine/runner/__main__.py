"""`python -m engine.runner --package DIR --socket PATH`: host one replica."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.manifest import Manifest
from engine.process_env import apply_gpu_process_env
from engine.runner.server import serve


def main() -> None:
    # Before the model's code runs its first GEMM (engine/process_env.py says why).
    apply_gpu_process_env()
    parser = argparse.ArgumentParser(prog="engine.runner")
    parser.add_argument("--package", required=True, type=Path, help="the unpacked model package")
    parser.add_argument("--manifest", required=True, type=Path, help="the validated manifest (JSON)")
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket to listen on")
    args = parser.parse_args()
    manifest = Manifest.from_dict(json.loads(args.manifest.read_text()))
    serve(args.package.resolve(), manifest, args.socket)


if __name__ == "__main__":
    main()
