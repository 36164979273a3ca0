"""engine.optimize on tiny seeded models of the real architectures: each mode matches eager.

Tolerances are per mode: `exact` changes only the order of bf16 roundings (fused kernels,
fused QKV, another attention kernel); `fast` adds e4m3 rounding of weights and
activations; `turbo` reuses outputs across steps on purpose and is checked for its step
accounting and a bounded drift. Compilation uses inductor once (the `fast` FLUX test, the
superset of the transformations) and dynamo's `aot_eager` backend elsewhere: the same
tracing and graph capture, without the C++ build that makes CPU inductor slow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.optimization import (  # noqa: E402
    FP8Linear,
    TurboConfig,
    compiled_frame_count,
    compute_plan,
    drift,
    hotswap_lora,
    optimize,
    quantize_linears,
    report_of,
)
from engine.optimization.lora import random_lora_state_dict  # noqa: E402
from engine.pipelines import (  # noqa: E402
    build_flux_pipeline,
    build_flux_transformer,
    build_sdxl_unet,
    build_wan_pipeline,
    flux_transformer_inputs,
    sdxl_unet_inputs,
)
from tests.engine.tiny import run as _run  # noqa: E402
from tests.engine.tiny import tiny as _tiny  # noqa: E402
from tests.engine.tiny import tiny_flux as _flux  # noqa: E402
from tests.engine.tiny import tiny_wan as _wan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AOT = {"compile_backend": "aot_eager"}
EXACT = {"rel_l2": 2e-2, "cosine": 0.9998}
FAST = {"rel_l2": 6e-2, "cosine": 0.998}


def _close(out: torch.Tensor, ref: torch.Tensor, tol: dict[str, float]) -> dict[str, float]:
    d = drift(out, ref)
    assert torch.isfinite(out).all()
    assert d["rel_l2"] <= tol["rel_l2"] and d["cosine"] >= tol["cosine"], d
    return d


def test_fp8_linear_matches_dequantized_reference():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 48).to(torch.bfloat16)
    # More rows than GEMV_MAX_ROWS: the activation is quantized too.
    x = torch.randn(3, 7, 64, generator=g).to(torch.bfloat16)
    q = FP8Linear.from_linear(lin)
    out = q(x).float()
    assert out.shape == (3, 7, 48) and out.dtype == torch.float32
    # The same function in fp32: dequantized weight and activation.
    w = q.weight.float() * q.weight_scale.reshape(-1, 1)
    xf = x.float().reshape(-1, 64)
    amax = xf.abs().amax(-1, keepdim=True)
    xq = (xf * (448.0 / amax)).to(torch.float8_e4m3fn).float() * (amax / 448.0)
    ref = (xq @ w.t() + q.bias.float()).reshape(3, 7, 48)
    assert drift(out, ref)["rel_l2"] < 1e-2
    # And close to the bf16 linear it replaced, within e4m3 rounding.
    assert drift(out, lin(x).float())["rel_l2"] < 6e-2


def test_fp8_linear_of_few_rows_keeps_the_activation():
    # adaLN modulation (one row per sample): weight-only fp8, the activation stays in bf16.
    from kernels.fp8_gemv import GEMV_MAX_ROWS

    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 48).to(torch.bfloat16)
    q = FP8Linear.from_linear(lin)
    w = q.weight.float() * q.weight_scale.reshape(-1, 1)
    for lead in [(1,), (2, 1), (GEMV_MAX_ROWS,)]:
        x = torch.randn(*lead, 64, generator=g).to(torch.bfloat16)
        out = q(x)
        assert out.shape == (*lead, 48) and out.dtype == torch.bfloat16
        ref = x.float() @ w.t() + q.bias.float()
        assert drift(out.float(), ref)["rel_l2"] < 5e-3
        assert drift(out.float(), lin(x).float())["rel_l2"] < 6e-2


def test_quantize_linears_respects_filter_and_alignment():
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 32), torch.nn.Linear(32, 10), torch.nn.Linear(32, 32)
    )
    replaced = quantize_linears(model, include=lambda name, lin: name != "2")
    assert replaced == ["0"]  # "1" has N=10 (not a multiple of 16), "2" is filtered out
    assert isinstance(model[0], FP8Linear) and type(model[1]) is torch.nn.Linear


def test_flux_fast_compiled_matches_eager(tmp_path):
    """fused QKV + fp8 linears + regional inductor compile, against eager bf16."""
    model, inputs = _flux()
    ref = _run(model, inputs)
    optimize(model, "fast", cache_dir=tmp_path)
    report = report_of(model)
    assert report.fused_qkv and report.fp8_linears > 0
    assert report.compiled.startswith("regional:")
    _close(_run(model, inputs), ref, FAST)
    # A second call runs the compiled code without recompiling.
    frames = compiled_frame_count()
    _close(_run(model, inputs), ref, FAST)
    assert compiled_frame_count() == frames
    # A replica starting over (dynamo's in-memory state dropped) compiles from the disk cache.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    hits = counters["inductor"].get("fxgraph_cache_hit", 0)
    again, _ = _flux()
    optimize(again, "fast", cache_dir=tmp_path)
    _close(_run(again, inputs), ref, FAST)
    assert counters["inductor"].get("fxgraph_cache_hit", 0) - hits >= 2  # both block graphs
    assert any((tmp_path / "inductor").iterdir())


@pytest.mark.parametrize("mode, tol", [("exact", EXACT), ("fast", FAST)])
def test_flux_modes_traced_match_eager(mode, tol):
    model, inputs = _flux()
    ref = _run(model, inputs)
    optimize(model, mode, **AOT)
    _close(_run(model, inputs), ref, tol)


def test_flux_exact_compiles_the_modules_outside_the_blocks():
    model, inputs = _flux()
    ref = _run(model, inputs)
    optimize(model, "exact", **AOT)
    report = report_of(model)
    assert report.compile_options["rest"] and report.compiled.startswith("regional:")
    _close(_run(model, inputs), ref, EXACT)
    frames = compiled_frame_count()
    _run(model, inputs)
    assert compiled_frame_count() == frames


def test_flux_chained_blocks_match_eager_and_keep_their_names():
    """Several blocks per compiled region: same function, same state dict, no recompiles."""
    model, inputs = _flux()
    plain, _ = _flux()
    optimize(plain, "exact", compile=False)  # fused QKV renames weights; chaining must not
    keys = list(plain.state_dict())
    sizes = (len(model.transformer_blocks), len(model.single_transformer_blocks))
    ref = _run(model, inputs)
    group = {"FluxSingleTransformerBlock": 2, "FluxTransformerBlock": 99}
    optimize(model, "exact", compile_group=group, **AOT)
    assert "chained" in report_of(model).compiled
    assert list(model.state_dict()) == keys
    assert (len(model.transformer_blocks), len(model.single_transformer_blocks)) == sizes
    _close(_run(model, inputs), ref, EXACT)
    frames = compiled_frame_count()
    _run(model, inputs)
    assert compiled_frame_count() == frames


def test_exact_runs_flux_qk_norm_and_rope_in_one_kernel():
    from engine.optimization.kernel_processors import FluxKernelAttnProcessor

    exact, inputs = _flux()
    fast, _ = _flux()
    ref = _run(exact, inputs)
    optimize(exact, "exact", compile=False)
    optimize(fast, "fast", compile=False)
    assert "qk_rmsnorm_rope" in report_of(exact).kernels
    assert "qk_rmsnorm_rope" not in report_of(fast).kernels
    procs = {type(m.processor) for m in exact.modules() if hasattr(m, "processor")}
    assert procs == {FluxKernelAttnProcessor}
    _close(_run(exact, inputs), ref, {"rel_l2": 1e-2, "cosine": 0.9999})


def test_flux_exact_uncompiled_is_the_same_function():
    model, inputs = _flux()
    ref = _run(model, inputs)
    optimize(model, "exact", compile=False)
    _close(_run(model, inputs), ref, {"rel_l2": 1e-2, "cosine": 0.9999})


@pytest.mark.parametrize("mode, tol", [("exact", EXACT), ("fast", FAST)])
def test_wan_modes_match_eager(mode, tol):
    model, inputs = _wan()
    ref = _run(model, inputs)
    optimize(model, mode, **AOT)
    report = report_of(model)
    assert report.fused_qkv and report.compiled == "regional:WanTransformerBlock"
    # fp32-pinned modules (rotary tables, norms, modulation tables) stay fp32.
    assert (
        model.rope.freqs_cos.dtype == torch.float32
        and model.blocks[0].scale_shift_table.dtype == torch.float32
    )
    _close(_run(model, inputs), ref, tol)


@pytest.mark.parametrize(
    "mode, tol", [("exact", EXACT), ("fast", {"rel_l2": 0.1, "cosine": 0.995})]
)
def test_sdxl_unet_modes_match_eager(mode, tol):
    unet = build_sdxl_unet("tiny", seed=0)
    inputs = sdxl_unet_inputs(unet, height=64, width=64, text_len=8)
    ref = _run(unet, inputs)
    optimize(unet, mode, **AOT)
    _close(_run(unet, inputs), ref, tol)


@pytest.mark.parametrize("build", ["flux", "wan"])
def test_sequence_major_attention_op_matches_eager(build):
    model, inputs = _tiny(build)
    ref = _run(model, inputs)
    optimize(model, "exact", attention_op=True, **AOT)
    assert report_of(model).attention_backend.startswith("sdpa_bshd")
    _close(_run(model, inputs), ref, EXACT)


def test_wan_rotation_is_diffusers_rotation_bit_for_bit():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from kernels.cudnn_fp8_operands import wan_rope_reference

    rope = WanRotaryPosEmbed(attention_head_dim=64, patch_size=(1, 2, 2), max_seq_len=64)
    cos, sin = rope(torch.zeros(1, 4, 3, 8, 8))
    x = torch.randn(1, cos.shape[1], 2, 64).bfloat16()
    # diffusers' WanAttnProcessor: interleaved pairs, stored through strided slices.
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s_ = cos[..., 0::2], sin[..., 1::2]
    ref = torch.empty_like(x)
    ref[..., 0::2] = x1 * c - x2 * s_
    ref[..., 1::2] = x1 * s_ + x2 * c
    assert torch.equal(wan_rope_reference(x, cos, sin), ref.type_as(x))


def test_optimize_touches_only_its_instance():
    from diffusers import FluxTransformer2DModel

    a, inputs = _flux()
    b, _ = _flux()
    ref = _run(b, inputs)
    optimize(a, "fast", **AOT)
    assert not hasattr(b, "_diffusers_hook") or not b._diffusers_hook.hooks
    assert "forward" not in vars(b) and FluxTransformer2DModel.forward is type(b).forward
    assert type(b.transformer_blocks[0].attn.to_q) is torch.nn.Linear
    assert b.transformer_blocks[0].attn.processor._attention_backend is None
    assert torch.equal(_run(b, inputs), ref)


def test_turbo_plan_gives_the_advertised_speedup():
    plan = compute_plan(28, TurboConfig())
    assert plan[:2] == [True, True] and plan[-1] is True
    assert sum(plan) == 15  # 28 / 15 = 1.87x fewer transformer passes
    assert compute_plan(3, TurboConfig()) == [True, True, True]


def test_flux_pipeline_turbo_skips_on_schedule_and_reports_drift():
    kw = {
        "prompt": "a cat",
        "height": 64,
        "width": 64,
        "num_inference_steps": 12,
        "output_type": "latent",
    }
    ref = build_flux_pipeline("tiny", seed=0)(
        **kw, generator=torch.Generator().manual_seed(0)
    ).images
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "turbo", **AOT)
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    steps = report_of(pipe).to_dict()["turbo_steps"][0]
    assert steps == {
        "computed": sum(compute_plan(12, TurboConfig())),
        "skipped": 12 - sum(compute_plan(12, TurboConfig())),
    }
    assert drift(out, ref)["cosine"] > 0.99
    # The state resets between requests: a second run skips the same steps.
    pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert report_of(pipe).to_dict()["turbo_steps"][0]["computed"] == 2 * steps["computed"]


def test_wan_pipeline_turbo_keeps_cond_and_uncond_apart():
    kw = {
        "prompt": "a cat",
        "height": 32,
        "width": 32,
        "num_frames": 5,
        "num_inference_steps": 6,
        "output_type": "latent",
    }
    ref = build_wan_pipeline("tiny", seed=0)(
        **kw, generator=torch.Generator().manual_seed(0)
    ).frames
    pipe = build_wan_pipeline("tiny", seed=0)
    optimize(pipe, "turbo", compile=False)
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    n = sum(compute_plan(6, TurboConfig()))
    assert report_of(pipe).to_dict()["turbo_steps"][0] == {
        "computed": 2 * n,
        "skipped": 2 * (6 - n),
    }
    assert drift(out, ref)["cosine"] > 0.99


def test_turbo_first_block_cache_runs():
    kw = {
        "prompt": "a cat",
        "height": 64,
        "width": 64,
        "num_inference_steps": 6,
        "output_type": "latent",
    }
    ref = build_flux_pipeline("tiny", seed=0)(
        **kw, generator=torch.Generator().manual_seed(0)
    ).images
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "turbo", turbo=TurboConfig(method="fbc", fbc_threshold=0.05), compile=False)
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert report_of(pipe).turbo["method"] == "fbc"
    assert drift(out, ref)["cosine"] > 0.99


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_lora_hotswap_without_recompiling(mode):
    rank = 8
    model, inputs = _flux()
    optimize(model, mode, lora_rank=rank, **AOT)
    report = report_of(model)
    assert report.lora_slot_rank == rank and not report.fused_qkv
    base = _run(model, inputs)
    frames = compiled_frame_count()
    for i, r in enumerate((4, 8)):
        sd = random_lora_state_dict(model, rank=r, seed=i, scale=0.1)
        hotswap_lora(model, sd)
        swapped = _run(model, inputs)
        assert compiled_frame_count() == frames, "a hot-swap recompiled"
        # Same result as loading that LoRA the ordinary way into an eager copy.
        ref_model, _ = _flux()
        ref_model.load_lora_adapter(sd, prefix=None, adapter_name="ref")
        ref = _run(ref_model, inputs)
        _close(swapped, ref, EXACT if mode == "exact" else FAST)
        assert drift(swapped, base)["rel_l2"] > 1e-3  # the adapter does something


def test_lora_hotswap_through_the_pipeline_api():
    pipe = build_flux_pipeline("tiny", seed=0)
    optimize(pipe, "exact", lora_rank=8, **AOT)
    kw = {
        "prompt": "a cat",
        "height": 64,
        "width": 64,
        "num_inference_steps": 2,
        "output_type": "latent",
    }
    before = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    frames = compiled_frame_count()
    sd = random_lora_state_dict(pipe.transformer, rank=8, seed=3, scale=0.2, prefix="transformer.")
    seconds = hotswap_lora(pipe, sd)
    after = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert seconds < 5 and compiled_frame_count() == frames
    assert drift(after, before)["rel_l2"] > 1e-3


def test_engine_exposes_optimize_lazily():
    code = "import sys, engine; assert 'torch' not in sys.modules; f = engine.optimize; print(f.__module__)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "engine.optimization.api"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_cuda_graphs_and_attention_on_gpu(mode, tmp_path):
    model = build_flux_transformer("tiny", device="cuda", dtype=torch.bfloat16, seed=0)
    inputs = flux_transformer_inputs(model, height=128, width=128, text_len=32)
    ref = _run(model, inputs)
    optimize(model, mode, cuda_graphs="always", cache_dir=tmp_path)
    out = _run(model, inputs)
    again = _run(model, inputs)
    report = report_of(model).to_dict()
    assert report["attention_backend"] is not None
    assert report["cuda_graph_decisions"] and report["cuda_graph_decisions"][0]["use_graph"]
    _close(out, ref, EXACT if mode == "exact" else FAST)
    assert torch.equal(out, again)
    # New inputs flow through the static buffers of the captured graph.
    inputs2 = dict(inputs, hidden_states=torch.randn_like(inputs["hidden_states"]))
    with torch.no_grad():
        ref2 = build_flux_transformer("tiny", device="cuda", dtype=torch.bfloat16, seed=0)(
            **inputs2
        )[0].float()
    _close(_run(model, inputs2), ref2, EXACT if mode == "exact" else FAST)


@pytest.mark.parametrize("build", ["flux", "flux-producer-off", "wan"])
def test_fp8_attention_matches_eager(build):
    """fast + fp8 attention (compiled, the kernel as an opaque op) against eager bf16."""
    producer = build != "flux-producer-off"
    if build.startswith("flux"):
        from diffusers import FluxTransformer2DModel

        from engine.pipelines._build import random_model
        from engine.pipelines.configs import FLUX_TINY_TRANSFORMER

        # Heads of 32 channels: the smallest the fused norm/RoPE/fp8 producer takes.
        cfg = {**FLUX_TINY_TRANSFORMER, "attention_head_dim": 32, "axes_dims_rope": (8, 12, 12)}
        model = random_model(FluxTransformer2DModel, cfg, device="cpu", dtype=torch.bfloat16, seed=0)
        inputs = flux_transformer_inputs(model, height=64, width=64, text_len=16)
    else:
        model, inputs = _wan()
    ref = _run(model, inputs)
    # Every attention in fp8, however short its keys (the default keeps short ones bf16).
    optimize(
        model, "fast", attention="fp8", attention_fp8_min_kv=0,
        attention_fp8_producer=producer, **AOT,
    )
    assert report_of(model).attention_backend == "sdpa_bshd:fp8"
    if build.startswith("flux"):
        procs = {type(m.processor).__name__ for m in model.modules() if hasattr(m, "processor")}
        assert procs == {"FluxSDPAProcessor"}
        assert all(
            m.processor.fp8_producer == producer for m in model.modules() if hasattr(m, "processor")
        )
    _close(_run(model, inputs), ref, FAST)


@pytest.mark.parametrize("build", ["flux", "wan"])
def test_gelu_fused_into_the_fp8_quantizer_matches_eager(build):
    """kernels=("gelu_fp8",): each feed-forward's GELU runs in its down projection's quantizer."""
    model, inputs = _tiny(build)
    ref = _run(model, inputs)
    keys = set(model.state_dict())
    optimize(model, "fast", kernels=("gelu_fp8",), **AOT)
    assert "gelu_fp8" in report_of(model).kernels
    fused = [m for m in model.modules() if getattr(m, "activation", None) == "gelu_tanh"]
    assert fused and all(isinstance(m, FP8Linear) for m in fused)
    if build == "flux":
        # Single blocks: proj_out's quantizer takes the attention output and gelu(mlp) itself.
        from diffusers.hooks import HookRegistry

        from engine.optimization.gelu_fp8 import HOOK_NAME

        singles = list(model.single_transformer_blocks)
        assert singles and all(
            HookRegistry.check_if_exists_or_initialize(b).get_hook(HOOK_NAME) for b in singles
        )
    # Names are unchanged (QKV fusion aside), so LoRA targets and checkpoints still match.
    ff_weights = {k for k in model.state_dict() if ".ff" in k and k.endswith(".weight")}
    assert ff_weights and ff_weights <= keys
    _close(_run(model, inputs), ref, FAST)


def test_fp8_attention_is_refused_where_it_cannot_apply():
    model, _ = _flux()
    with pytest.raises(ValueError, match="exact"):
        optimize(model, "exact", attention="fp8", **AOT)
    # A UNet has no FLUX/Wan attention: it keeps bf16 attention and says so.
    unet = build_sdxl_unet("tiny", seed=0)
    optimize(unet, "fast", attention="fp8", **AOT)
    assert any("fp8" in n for n in report_of(unet).notes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp8_attention_under_cuda_graphs_on_gpu(tmp_path):
    model = build_flux_transformer("tiny", device="cuda", dtype=torch.bfloat16, seed=0)
    inputs = flux_transformer_inputs(model, height=128, width=128, text_len=32)
    ref = _run(model, inputs)
    optimize(
        model,
        "fast",
        attention="fp8",
        attention_fp8_min_kv=0,
        cuda_graphs="always",
        cache_dir=tmp_path,
    )
    _run(model, inputs)
    report = report_of(model).to_dict()
    # cuDNN's where it runs ("fp8-cudnn"; at these 16-channel heads our kernel inside it).
    assert report["attention_backend"].startswith("sdpa_bshd:fp8")
    assert report["cuda_graph_decisions"] and report["cuda_graph_decisions"][0]["use_graph"]
    _close(_run(model, inputs), ref, FAST)
