"""FLUX's adaLN modulations: one table per generation, looked up by each step's inputs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.optimization import drift, optimize, report_of  # noqa: E402
from engine.optimization.modulation import (  # noqa: E402
    BankedModulation,
    tabulate_flux_modulations,
)
from engine.pipelines import build_flux_pipeline  # noqa: E402
from tests.engine.tiny import tiny_flux  # noqa: E402

AOT = {"compile_backend": "aot_eager"}
STEPS = 5
CALL = {"prompt": "a cat", "height": 64, "width": 64, "output_type": "latent"}


def _run(pipe, **kw):
    args = {**CALL, "num_inference_steps": STEPS, **kw}
    return pipe(**args, generator=torch.Generator().manual_seed(0)).images


def _calls(pipe) -> dict[str, int]:
    return report_of(pipe).to_dict()["modulation_calls"][0]


def _stats(from_table: int, computed: int, tables_built: int, run_again: int) -> dict[str, int]:
    return {
        "from_table": from_table,
        "computed": computed,
        "tables_built": tables_built,
        "run_again": run_again,
    }


def _assert_close(out, ref, cosine=0.9999, rel_l2=1e-2):
    d = drift(out, ref)
    assert d["cosine"] >= cosine and d["rel_l2"] <= rel_l2, d


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_each_step_reads_its_modulations_from_one_table_per_generation(mode):
    ref = _run(build_flux_pipeline("tiny", seed=0))
    pipe = build_flux_pipeline("tiny", seed=0)
    norm_keys = {k for k in pipe.transformer.state_dict() if "norm" in k}
    optimize(pipe, mode, **AOT)
    assert "modulation_table" in report_of(pipe).kernels
    out = _run(pipe)
    _assert_close(out, ref, *((0.9999, 1e-2) if mode == "exact" else (0.998, 6e-2)))
    assert _calls(pipe) == _stats(STEPS, 0, 1, 0)
    # A second generation sets its timesteps again: a new table, the same image.
    again = _run(pipe)
    assert torch.equal(again, out)
    assert _calls(pipe) == _stats(2 * STEPS, 0, 2, 0)
    assert norm_keys <= set(pipe.transformer.state_dict())  # fp8 adds its weight scales
    banked = [m for m in pipe.transformer.modules() if isinstance(m, BankedModulation)]
    assert (
        len(banked)
        == 2 * len(pipe.transformer.transformer_blocks)
        + len(pipe.transformer.single_transformer_blocks)
        + 1
    )


def test_a_prompt_and_its_negative_get_a_table_each():
    kw = {"negative_prompt": "a dog", "true_cfg_scale": 2.0}
    ref = _run(build_flux_pipeline("tiny", seed=0), **kw)
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "exact", **AOT)
    _assert_close(_run(pipe, **kw), ref)
    assert _calls(pipe) == _stats(2 * STEPS, 0, 2, 0)


def test_a_call_off_the_schedule_computes_its_own_modulations():
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "exact", **AOT)
    _run(pipe)
    plain, inputs = tiny_flux()
    inputs["timestep"] = torch.full_like(inputs["timestep"], 0.123)
    with torch.no_grad():
        out = pipe.transformer(**inputs)[0]
        ref = plain(**inputs)[0]
    _assert_close(out, ref)
    assert _calls(pipe)["computed"] == 1


def test_checked_after_launch_a_call_off_the_table_runs_again_computed():
    ref = _run(build_flux_pipeline("tiny", seed=0))
    pipe = build_flux_pipeline("tiny", seed=0)
    hook = tabulate_flux_modulations(pipe.transformer, pipe.scheduler, check_after_launch=True)
    _assert_close(_run(pipe), ref)
    assert hook.stats == _stats(STEPS, 0, 1, 0)
    plain, inputs = tiny_flux()
    with torch.no_grad():
        ref = plain(**inputs)[0]
        # A condition of its own: a table from the schedule, which this timestep is not in.
        _assert_close(pipe.transformer(**inputs)[0], ref)
        assert hook.stats["tables_built"] == 2 and hook.stats["run_again"] == 1
        # The rest of that condition's calls compute at once.
        _assert_close(pipe.transformer(**inputs)[0], ref)
    assert hook.stats == _stats(STEPS, 2, 2, 1)


def test_a_bare_transformer_without_a_scheduler_computes_every_call():
    model, inputs = tiny_flux()
    with torch.no_grad():
        ref = model(**inputs)[0]
        optimize(model, "exact", **AOT)
        for _ in range(2):
            _assert_close(model(**inputs)[0], ref)
    assert report_of(model).to_dict()["modulation_calls"][0] == _stats(0, 2, 0, 0)


def test_weights_changed_in_place_drop_the_tables():
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "exact", **AOT)
    seen: list[dict] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(dict(kw)) if not seen else None, with_kwargs=True
    )
    _run(pipe)
    handle.remove()
    plain = build_flux_pipeline("tiny", seed=0).transformer
    with torch.no_grad():
        first = pipe.transformer(**seen[0])[0]
        assert _calls(pipe)["tables_built"] == 1
        for model in (pipe.transformer, plain):  # a LoRA fused into a modulation, say
            model.transformer_blocks[0].norm1.linear.weight.mul_(3.0)
        # The same schedule and the same inputs, new weights: a new table.
        out = pipe.transformer(**seen[0])[0]
        ref = plain(**seen[0])[0]
    assert not torch.equal(out, first)
    _assert_close(out, ref)
    assert _calls(pipe) == _stats(STEPS + 2, 0, 2, 0)


def test_a_kernel_set_without_the_table_keeps_the_linears():
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "exact", kernels=("gelu_epilogue",), **AOT)
    assert "modulation_table" not in report_of(pipe).kernels
    assert not any(isinstance(m, BankedModulation) for m in pipe.transformer.modules())
