"""Precision of the transcoder step: when bf16 autocast is chosen, the bf16 step against the float32 one, and the
top-k selection, which must pick exactly torch.topk's set."""
import copy

import pytest
import torch

from kit.config import TrainConfig, TranscoderConfig
from kit.config.fields import ConfigError
from kit.model.loss import mse_loss
from kit.model.topk_encoder import grouped_topk, topk
from kit.model.transcoder import Transcoder
from kit.train import precision
from kit.train.objective import objective
from kit.train.trainer import Trainer
from synthetic import PlantedDictionaryStore

GRAD_RTOL = 2e-2
"""Largest relative error ||g_bf16 - g_fp32|| / ||g_fp32|| of any parameter's gradient (measured: at most 1e-3)."""


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 {flags}\n")
    return path


def test_auto_follows_the_device_and_the_cpu_flags(tmp_path):
    amx = precision.choose("auto", "cpu", cpuinfo=cpuinfo(tmp_path, "avx512_bf16 amx_bf16 amx_tile"))
    assert amx == (True, "CPU has amx_bf16")
    assert amx.describe() == "transcoder step: bf16 autocast (CPU has amx_bf16)"
    avx = precision.choose("auto", "cpu", cpuinfo=cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert not avx.bf16 and avx.reason.startswith("CPU has avx512_bf16 but no amx_bf16")
    assert precision.choose("auto", "cpu", cpuinfo=cpuinfo(tmp_path, "avx2")) == (
        False, "CPU has no bf16 matmul instructions")
    assert precision.choose("auto", "cpu", cpuinfo=tmp_path / "missing") == (
        False, "CPU has no bf16 matmul instructions")
    assert precision.choose("on", "cpu", cpuinfo=tmp_path / "missing") == (True, "train.autocast=on")
    assert precision.choose("off", "cpu", cpuinfo=cpuinfo(tmp_path, "amx_bf16")) == (False, "train.autocast=off")
    assert not precision.choose("on", "cpu", torch.bfloat16).bf16, "bf16 parameters leave no fp32 master weights"


def test_the_setting_is_checked_and_the_trainer_says_what_it_chose(capsys):
    with pytest.raises(ConfigError, match="autocast must be one of"):
        TrainConfig(autocast="yes")
    tc = Transcoder(TranscoderConfig(d_in=64, d_out=64, d_latent=128, activation="topk", k=4))
    Trainer(tc, PlantedDictionaryStore(), TrainConfig(steps=2, autocast="on"))
    assert capsys.readouterr().out == "transcoder step: bf16 autocast (train.autocast=on)\n"


def planted_batch(d: int = 128, latents: int = 512, k: int = 8, rows: int = 1024):
    """A transcoder and a batch whose top k is unambiguous: x = f @ A for an orthonormal A that the first d
    encoder columns read exactly (pre-acts of 1 to 2 for the k active atoms, below ~0.7 everywhere else)."""
    gen = torch.Generator().manual_seed(0)
    A = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    f = torch.zeros(rows, d).scatter_(1, torch.rand(rows, d, generator=gen).topk(k).indices,
                                      1 + torch.rand(rows, k, generator=gen))
    x, y = f @ A, f @ torch.randn(d, d, generator=gen)
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=d, d_out=d, d_latent=latents, activation="topk", k=k))
    with torch.no_grad():
        tc.W_enc[:, :d] = A.T
        tc.W_enc[:, d:] = 0.05 * torch.nn.functional.normalize(torch.randn(d, latents - d, generator=gen), dim=0)
    return tc, x, y


def test_the_bf16_step_matches_the_float32_step():
    tc, x, y = planted_batch()
    steps = {}
    for setting in ("off", "on"):
        trainer = Trainer(copy.deepcopy(tc), None, TrainConfig(steps=4, autocast=setting))
        out, _, loss = trainer.train_step(x, y, 0)
        steps[setting] = trainer, out, loss
    (fp32, out32, loss32), (bf16, out16, loss16) = steps["off"], steps["on"]
    assert bf16.precision.bf16 and not fp32.precision.bf16
    assert torch.equal(out16.top_idx.sort(1).values, out32.top_idx.sort(1).values), "same latents selected"
    assert loss16.dtype == torch.float32 and abs(loss16 / loss32 - 1) < 1e-2
    for (name, p32), p16 in zip(fp32.tc.named_parameters(), bf16.tc.parameters()):
        assert p16.dtype == p16.grad.dtype == torch.float32, f"{name}: master weights and gradients stay fp32"
        error = ((p16.grad - p32.grad).norm() / p32.grad.norm()).item()
        assert error <= GRAD_RTOL, f"{name}: relative gradient error {error:.2e}"
        state = bf16.optimizer.state[p16]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32, f"{name}: Adam state fp32"
    assert out16.top_vals.dtype == out16.acts.dtype == torch.float32, "the collector sees float32 values"


@pytest.mark.parametrize("activation,k", [("topk", 8), ("batchtopk", 8), ("relu", None), ("jumprelu", None)])
def test_the_loss_sums_in_float32_under_autocast(activation, k):
    tc, x, y = planted_batch()
    tc = Transcoder(TranscoderConfig(d_in=128, d_out=128, d_latent=512, activation=activation, k=k))
    cfg = TrainConfig(sparsity_coeff=1e-3)
    with precision.autocast(precision.Precision(True, "test"), "cpu"):
        out = tc(x)
        loss = objective(tc, cfg, out, x, y, 1e-3, torch.ones(512, dtype=torch.bool))
        mse = mse_loss(out.y_hat, y)
    assert loss.dtype == mse.dtype == torch.float32
    exact = (out.y_hat.double() - y.double()).square().sum(-1).mean()
    assert abs(mse.double() / exact - 1) < 1e-5, "a bf16 sum would be off by ~1e-3"
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in tc.parameters())


def same_selection(pre, k):
    vals, idx = grouped_topk(pre, k)
    ref_vals, ref_idx = pre.topk(k, dim=1, sorted=False)
    order, ref_order = idx.argsort(1), ref_idx.argsort(1)
    assert torch.equal(idx.gather(1, order), ref_idx.gather(1, ref_order)), "the same latents as torch.topk"
    assert torch.allclose(vals.gather(1, order), ref_vals.gather(1, ref_order), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_selects_torch_topks_set_without_falling_back(monkeypatch, dtype):
    calls = []
    full_topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, *a, **kw: calls.append(t.shape) or full_topk(t, *a, **kw))
    pre = torch.randn(256, 9216, generator=torch.Generator().manual_seed(1), dtype=dtype)
    same_selection(pre, 32)
    assert calls == [(256, 576), (256, 33 * 16), (256, 9216)], "two small passes settle every row (then the reference)"


def test_topk_ties_and_rows_with_fewer_than_k_positive_values_match_torch_topk():
    gen = torch.Generator().manual_seed(2)
    pre = torch.randn(64, 1024, generator=gen)
    pre[:8] = pre[:8].round()                          # ties across the k-th value
    pre[8:16] = -pre[8:16].abs()                       # no positive value ...
    pre[12:16, :3] = 1.0                               # ... or 3 of them, tied
    pre[16:20] = 0.0                                   # all tied
    pre[20, 5], pre[21] = float("nan"), float("nan")   # torch.topk ranks NaN first
    pre[22, [7, 900]] = float("inf")
    pre[23:26] = -float("inf")
    pre[23:26, 3] = 2.0
    same_selection(pre, 8)
    same_selection(pre.double(), 8)


def test_the_topk_activation_keeps_relu_after_the_selection():
    """Non-positive values are selected exactly as torch.topk picks them and then clipped to 0."""
    tc = Transcoder(TranscoderConfig(d_in=64, d_out=64, d_latent=1024, activation="topk", k=8))
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tc.b_enc.fill_(-50.0)
        tc.b_enc[:3] = 50.0                             # 3 positive latents per row, the rest negative
    pre = tc._pre_acts(x)
    ref_vals, ref_idx = pre.topk(8, dim=1, sorted=False)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = tc(x)
        assert torch.equal(out.top_idx.sort(1).values, ref_idx.sort(1).values)
        expected = torch.zeros_like(pre).scatter_(1, ref_idx, ref_vals.clamp_min(0))
        assert torch.equal(out.acts, expected) and (out.acts > 0).sum(1).eq(3).all()
    assert topk(pre.bfloat16(), 8)[1].shape == (32, 8), "bf16 rows (autocast) use torch.topk directly"
