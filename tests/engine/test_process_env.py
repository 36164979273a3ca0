"""The settings a replica's process starts with (engine/process_env.py)."""

from __future__ import annotations

import os
import sys

import pytest

from engine.process_env import GPU_PROCESS_ENV, apply_gpu_process_env, gpu_process_env_missing


def test_apply_sets_what_is_missing_and_keeps_what_the_deployment_chose():
    env = {"CUBLASLT_WORKSPACE_SIZE": "4096", "PATH": "/bin"}
    assert apply_gpu_process_env(env) == {}
    assert env["CUBLASLT_WORKSPACE_SIZE"] == "4096"
    assert gpu_process_env_missing(env) == ["CUBLASLT_WORKSPACE_SIZE=0"]
    env = {"PATH": "/bin"}
    assert apply_gpu_process_env(env) == GPU_PROCESS_ENV
    assert env == {"PATH": "/bin", **GPU_PROCESS_ENV}
    assert gpu_process_env_missing(env) == []


def test_the_runner_applies_it_before_anything_else(monkeypatch):
    from engine.runner.__main__ import main

    monkeypatch.delenv("CUBLASLT_WORKSPACE_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["engine.runner", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert os.environ["CUBLASLT_WORKSPACE_SIZE"] == "0"
