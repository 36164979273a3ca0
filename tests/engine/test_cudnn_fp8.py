"""cuDNN fp8 attention (engine/optimization/cudnn_fp8.py): its quantization, bounds and op.

On CPU the op runs the torch emulation of cuDNN's quantized math, so these check the
arrangement around cuDNN (static bounds, centred K, per-channel V folded out of the
output); on a Hopper GPU with cudnn-frontend the same tests run the real kernel.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch.nn.functional as F  # noqa: E402

from engine.optimization import drift, optimize, report_of  # noqa: E402
from engine.optimization.cudnn_fp8 import (  # noqa: E402
    attention_fp8_cudnn,
    cudnn_attention_fp8,
    cudnn_fp8_attention_available,
    rmsnorm_bound,
)
from tests.engine.tiny import tiny as _tiny  # noqa: E402

GPU = torch.cuda.is_available() and cudnn_fp8_attention_available(0)


def _exact(q, k, v):
    qh, kh, vh = (t.float().transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2)


def _normed_qkv(s=300, h=2, d=64, device="cpu", offset=3.0):
    g = torch.Generator(device=device).manual_seed(0)
    norm_q, norm_k = torch.nn.RMSNorm(d), torch.nn.RMSNorm(d)
    with torch.no_grad():
        norm_q.weight.copy_(0.5 + torch.rand(d, generator=torch.Generator().manual_seed(1)))
        norm_k.weight.copy_(0.5 + torch.rand(d, generator=torch.Generator().manual_seed(2)))
    norm_q, norm_k = norm_q.to(device), norm_k.to(device)
    x = torch.randn(1, s, h, d, generator=g, device=device)
    # A per-channel offset on K's input: the common component that centring K removes.
    xk = torch.randn(1, s, h, d, generator=g, device=device) + offset * torch.randn(
        1, 1, h, d, generator=g, device=device
    )
    with torch.no_grad():
        q, k = norm_q(x).bfloat16(), norm_k(xk).bfloat16()
    v = (
        torch.randn(1, s, h, d, generator=g, device=device)
        * torch.linspace(0.1, 4, d, device=device)
    ).bfloat16()
    return q, k, v, norm_q, norm_k


def test_rmsnorm_bound_holds_for_normed_and_rotated_vectors():
    q, k, _, norm_q, norm_k = _normed_qkv()
    bq, bk = rmsnorm_bound(norm_q), rmsnorm_bound(norm_k)
    assert q.float().abs().max() <= bq and k.float().abs().max() <= bk
    # A rotation of pairs keeps every pair's norm, so the bound still holds after RoPE.
    theta = torch.rand(q.shape[-1] // 2) * 2 * math.pi
    x1, x2 = q.float()[..., 0::2], q.float()[..., 1::2]
    rotated = torch.stack(
        [x1 * theta.cos() - x2 * theta.sin(), x1 * theta.sin() + x2 * theta.cos()], -1
    )
    assert rotated.abs().max() <= bq
    # The worst case: all of a vector's energy in one channel of the largest weight.
    spike = torch.zeros(1, 1, 1, q.shape[-1])
    spike[..., int(norm_q.weight.argmax())] = 5.0
    assert norm_q(spike).abs().max() <= bq
    assert rmsnorm_bound(torch.nn.RMSNorm(8, elementwise_affine=False)) is None


@pytest.mark.parametrize("with_bounds,smooth_k", [(True, True), (False, True), (True, False)])
def test_quantized_attention_tracks_fp32_attention(with_bounds, smooth_k):
    q, k, v, norm_q, norm_k = _normed_qkv()
    bounds = (rmsnorm_bound(norm_q), rmsnorm_bound(norm_k)) if with_bounds else (None, None)
    out = attention_fp8_cudnn(q, k, v, *bounds, smooth_k=smooth_k)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    d = drift(out.float(), _exact(q, k, v))
    assert d["cosine"] >= 0.995, d


def test_centred_k_and_per_channel_v_are_what_keep_the_error_small():
    """Without centring, K's common offset sets its step; per-tensor V loses the small channels.

    1,000 tokens: K's centring vector is the mean of a sample of them (every third)."""
    q, k, v, norm_q, norm_k = _normed_qkv(s=1000, offset=20.0)
    ref = _exact(q, k, v)
    ours = drift(
        attention_fp8_cudnn(q, k, v, rmsnorm_bound(norm_q), rmsnorm_bound(norm_k)).float(), ref
    )
    # The same op with K uncentred and V scaled per tensor, by hand.
    kb = k.float().abs().amax()
    vb = v.float().abs().amax()
    q8 = (q.float() * (448 / rmsnorm_bound(norm_q))).to(torch.float8_e4m3fn)
    k8 = (k.float() * (448 / kb)).to(torch.float8_e4m3fn)
    v8 = (v.float() * (448 / vb)).to(torch.float8_e4m3fn)
    o8 = cudnn_attention_fp8(
        q8, k8, v8, (rmsnorm_bound(norm_q) / 448).reshape(1), (kb / 448).reshape(1)
    )
    naive = drift(o8.float() * (vb / 448), ref)
    assert ours["rel_l2"] < naive["rel_l2"], (ours, naive)


@pytest.mark.parametrize("s", [300, 256])
def test_keys_padded_to_the_alignment_are_masked_out(s):
    from engine.optimization.cudnn_fp8 import quantize_for_cudnn

    q, k, v, norm_q, norm_k = _normed_qkv(s=s)
    bounds = rmsnorm_bound(norm_q), rmsnorm_bound(norm_k)
    q8, k8, v8, *_ = quantize_for_cudnn(q, k, v, *bounds, kv_align=128)
    assert q8.shape[1] == s and k8.shape[1] == v8.shape[1] == -(-s // 128) * 128
    assert not k8[:, s:].float().any() and not v8[:, s:].float().any()
    padded = attention_fp8_cudnn(q, k, v, *bounds, kv_align=128)
    plain = attention_fp8_cudnn(q, k, v, *bounds, kv_align=1)
    assert padded.shape == plain.shape == q.shape
    assert drift(padded.float(), plain.float())["cosine"] >= 0.99999


def test_op_traces_under_compile():
    q, k, v, norm_q, norm_k = _normed_qkv(s=64)
    fn = torch.compile(attention_fp8_cudnn, backend="aot_eager", fullgraph=True)
    out = fn(q, k, v, rmsnorm_bound(norm_q), rmsnorm_bound(norm_k))
    assert drift(out.float(), _exact(q, k, v))["cosine"] >= 0.995


def _fast_cudnn_fp8_optimize(model, **kwargs) -> None:
    optimize(
        model,
        "fast",
        attention="fp8",
        attention_fp8_backend="cudnn",
        attention_fp8_min_kv=0,
        **kwargs,
    )


@pytest.mark.parametrize("build", ["flux", "wan"])
def test_fast_with_cudnn_fp8_attention_matches_eager(build):
    model, inputs = _tiny(build)
    with torch.no_grad():
        ref = model(**inputs)[0].float()
    _fast_cudnn_fp8_optimize(model, compile_backend="aot_eager")
    assert report_of(model).attention_backend == "sdpa_bshd:fp8-cudnn"
    with torch.no_grad():
        out = model(**inputs)[0].float()
    d = drift(out, ref)
    assert d["cosine"] >= 0.998 and d["rel_l2"] <= 6e-2, d


def test_output_rows_are_the_quantized_bf16_output():
    from engine.optimization.cudnn_fp8 import attention_fp8_cudnn_rows
    from kernels.fp8 import quantize_fp8_rowwise_reference

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 300, 4, 64, generator=g).to(torch.bfloat16) for _ in range(3))
    xq, xs = attention_fp8_cudnn_rows(q, k, v)
    ref_q, ref_s = quantize_fp8_rowwise_reference(attention_fp8_cudnn(q, k, v).flatten(2, 3))
    assert xq.shape == (2, 300, 256) and xs.shape == (2, 300, 1)
    torch.testing.assert_close(xs, ref_s, rtol=0, atol=0)
    assert torch.equal(xq.view(torch.uint8), ref_q.view(torch.uint8))


def _fast_cudnn_fp8(build: str):
    # A tiny model in `fast` with cuDNN's fp8 attention (its emulation on CPU), eager, with
    # its processors and a run that returns the output and how often each op ran.
    from engine.optimization.sdpa import FluxSDPAProcessor, WanSDPAProcessor

    model, inputs = _tiny(build)
    _fast_cudnn_fp8_optimize(model, compile=False)
    kinds = (FluxSDPAProcessor, WanSDPAProcessor)
    processors = [
        m.processor for m in model.modules() if isinstance(getattr(m, "processor", None), kinds)
    ]
    assert processors

    def run() -> tuple[torch.Tensor, dict[str, int]]:
        with torch.no_grad(), torch.profiler.profile() as prof:
            out = model(**inputs)[0].float()
        ran: dict[str, int] = {}
        for e in prof.events():
            ran[e.name] = ran.get(e.name, 0) + 1
        return out, ran

    return processors, run


PRODUCER = "mediagate::norm_rope_quantize_for_cudnn"
REQUANTIZE = "mediagate::requantize_fp8_rowwise"


def test_wan_self_attention_from_one_producer_straight_to_fp8_rows():
    processors, run = _fast_cudnn_fp8("wan")
    fused, ran = run()
    assert PRODUCER in ran and REQUANTIZE in ran
    for proc in processors:
        proc.fp8_producer = False
    rows_only, ran = run()
    assert PRODUCER not in ran and REQUANTIZE in ran
    for proc in processors:
        proc.fuse_fp8_output = False
    unfused, ran = run()
    assert REQUANTIZE not in ran
    # The same codes either way, up to how a sum or a row's 448 / amax is rounded.
    assert drift(fused, rows_only)["cosine"] >= 0.9999
    assert drift(rows_only, unfused)["cosine"] >= 0.9999


def test_wan_cross_attention_goes_to_its_output_projection_in_fp8_rows():
    # Both attentions of every block, self and text cross, hand cuDNN's e4m3 output to
    # their output projection's fp8 rows.
    processors, run = _fast_cudnn_fp8("wan")
    _, ran = run()
    assert ran.get(REQUANTIZE) == len(processors) >= 4


def test_cudnn_fp8_runs_from_wans_512_text_tokens_our_kernel_from_2048():
    from engine.optimization.sdpa import WanSDPAProcessor, default_fp8_min_kv
    from engine.pipelines import build_wan_transformer

    assert default_fp8_min_kv("fp8-cudnn") == 512 and default_fp8_min_kv("fp8") == 2048
    for backend, min_kv in (("cudnn", 512), ("triton", 2048)):
        model = build_wan_transformer("tiny", seed=0)
        optimize(model, "fast", attention="fp8", attention_fp8_backend=backend, compile=False)
        procs = [m.processor for m in model.modules() if hasattr(m, "processor")]
        assert procs and all(isinstance(p, WanSDPAProcessor) for p in procs)
        assert {p.fp8_min_kv for p in procs} == {min_kv}


def _on_and_off(switch: str, op: str) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    # FLUX with each processor's `switch` on, then off (`op` must not run then): how often
    # each op ran with it on, and both outputs.
    processors, run = _fast_cudnn_fp8("flux")
    on, ran = run()
    for proc in processors:
        setattr(proc, switch, False)
    off, ran_off = run()
    assert op not in ran_off
    return {**ran, "processors": len(processors)}, on, off


def test_flux_attention_from_one_producer_matches_the_separate_steps():
    # Double-stream blocks (a text stream with its own norms) and single-stream ones.
    ran, fused, separate = _on_and_off("fp8_producer", PRODUCER)
    assert ran.get(PRODUCER) == ran["processors"] >= 2
    assert drift(fused, separate)["cosine"] >= 0.9999


def test_flux_attention_output_goes_to_the_projections_in_fp8():
    # Double blocks: cuDNN's e4m3 output requantized to rows that split between to_add_out
    # and to_out; single blocks: proj_out's quantizer reads it with its per-channel units.
    ran, fused, unfused = _on_and_off("fuse_fp8_output", REQUANTIZE)
    assert ran.get(REQUANTIZE, 0) >= 1
    # The same codes either way, up to how a row's 448 / amax is rounded.
    assert drift(fused, unfused)["cosine"] >= 0.9999


def test_flux_single_block_attention_hands_over_cudnns_e4m3_output():
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    processors, _ = _fast_cudnn_fp8("flux")
    block = FluxSingleTransformerBlock(dim=64, num_attention_heads=2, attention_head_dim=32)
    block = block.to(torch.bfloat16).eval()
    block.attn.set_processor(processors[-1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 64, generator=g).to(torch.bfloat16)
    theta = torch.randn(40, 16, generator=g).repeat_interleave(2, dim=-1)
    rotary = (theta.cos(), theta.sin())
    with torch.no_grad():
        bf16 = block.attn(hidden_states=x, image_rotary_emb=rotary)
        o8, unit = block.attn(hidden_states=x, image_rotary_emb=rotary, fp8_output=True)
    assert o8.dtype == torch.float8_e4m3fn and o8.shape == (1, 40, 64)
    assert unit.shape == (1, 1, 64)
    assert torch.equal((o8.float() * unit).to(torch.bfloat16), bf16)


def test_auto_picks_our_kernel_without_cudnn_and_rejects_unknown_backends():
    from engine.pipelines import build_flux_transformer

    model = build_flux_transformer("tiny", dtype=torch.bfloat16, seed=0)
    with pytest.raises(ValueError, match="attention_fp8_backend"):
        optimize(model, "fast", attention="fp8", attention_fp8_backend="cuda", compile=False)
    optimize(model, "fast", attention="fp8", compile=False)
    assert report_of(model).attention_backend == "sdpa_bshd:fp8"


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a Hopper GPU and cudnn-frontend")
@pytest.mark.parametrize("shape", [(1, 4608, 24, 128), (2, 1000, 4, 64)])
def test_cudnn_kernel_matches_its_emulation_on_gpu(shape):
    from engine.optimization.cudnn_fp8 import _reference_core

    b, s, h, d = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q8, k8, v8 = (
        (torch.randn(b, s, h, d, device="cuda", generator=g) * 60).to(torch.float8_e4m3fn)
        for _ in range(3)
    )
    dq = torch.full((1,), 1 / 60, device="cuda")
    out = cudnn_attention_fp8(q8, k8, v8, dq, dq)
    ref = _reference_core(q8, k8, v8, dq, dq)
    assert drift(out.float(), ref.float())["cosine"] >= 0.999
    # Captured in a CUDA graph, the op replays with the inputs' new values.
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cudnn_attention_fp8(q8, k8, v8, dq, dq)
        with torch.cuda.graph(graph, stream=stream):
            captured = cudnn_attention_fp8(q8, k8, v8, dq, dq)
    torch.cuda.current_stream().wait_stream(stream)
    q8.copy_(k8)
    graph.replay()
    ref2 = _reference_core(q8, k8, v8, dq, dq)
    assert drift(captured.float(), ref2.float())["cosine"] >= 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a Hopper GPU and cudnn-frontend")
def test_cudnn_padding_mask_matches_its_emulation_on_gpu():
    from engine.optimization.cudnn_fp8 import _reference_core

    g = torch.Generator(device="cuda").manual_seed(0)
    q8, k8, v8 = (
        (torch.randn(1, 1000, 4, 128, device="cuda", generator=g) * 60).to(torch.float8_e4m3fn)
        for _ in range(3)
    )
    # Keys 1000..1023 hold large values: masked, they must change nothing.
    k8p, v8p = (torch.cat([t, torch.full_like(t[:, :24], 400.0)], dim=1) for t in (k8, v8))
    dq = torch.full((1,), 1 / 60, device="cuda")
    out = cudnn_attention_fp8(q8, k8p, v8p, dq, dq, 1000)
    ref = _reference_core(q8, k8, v8, dq, dq)
    assert drift(out.float(), ref.float())["cosine"] >= 0.999
