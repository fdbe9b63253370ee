"""Transcoder and its losses, checked against manual computations and invariants."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from kit.model.loss import auxk_loss, l1_penalty, mse_loss
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig

D_IN, D_OUT, L, K, B = 12, 10, 40, 4, 16
K_BY_ACT = {"relu": None, "jumprelu": None, "topk": K, "batchtopk": K}


def make(activation="topk", skip=False, d_in=D_IN, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = TranscoderConfig(d_in, D_OUT, L, activation=activation, k=K_BY_ACT[activation], skip=skip,
                           dtype="float64", **kw)
    model = Transcoder(cfg)
    with torch.no_grad():  # nonzero biases and skip weights, so every term shows up in the checks
        model.b_enc.normal_(0, 0.1)
        model.b_dec.normal_()
        if skip:
            model.W_skip.normal_()
    return model


def inputs(d_in=D_IN, seed=1):
    return torch.randn(B, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kw, message", [
    (dict(activation="topk"), "needs k"),
    (dict(activation="topk", k=L + 1), "needs k"),
    (dict(activation="relu", k=4), "set k=None"),
    (dict(activation="gelu"), "activation must be one of"),
    (dict(activation="relu", dtype="float8"), "dtype must be one of"),
    (dict(activation="jumprelu", jumprelu_bandwidth=0.0), "jumprelu_bandwidth must be > 0"),
    (dict(activation="relu", d_latent=0), "d_latent must be a positive int"),
])
def test_config_rejects_bad_values(kw, message):
    base = dict(d_in=D_IN, d_out=D_OUT, d_latent=L)
    with pytest.raises(ValueError, match=message):
        TranscoderConfig(**{**base, **kw})


def test_config_dict_round_trip_and_unknown_field():
    cfg = TranscoderConfig(D_IN, D_OUT, L, activation="batchtopk", k=3, skip=True, dtype="bfloat16")
    assert TranscoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TranscoderConfig fields"):
        TranscoderConfig.from_dict({**cfg.to_dict(), "lr": 1e-3})


def test_init_unit_decoder_rows_tied_encoder_and_zero_skip():
    model = Transcoder(TranscoderConfig(D_OUT, D_OUT, L, activation="topk", k=K, skip=True))
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(L))
    assert torch.equal(model.W_enc, model.W_dec.T)
    assert not model.W_skip.any() and not model.b_dec.any()


@pytest.mark.parametrize("activation", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("skip", [False, True])
def test_forward_equals_decode_of_encode(activation, skip):
    model, x = make(activation, skip), inputs()
    out = model(x)
    torch.testing.assert_close(out.acts, model.encode(x))
    torch.testing.assert_close(out.y_hat, model.decode(model.encode(x), x))
    torch.testing.assert_close(out.pre_acts, x @ model.W_enc + model.b_enc)


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "jumprelu"])
def test_bfloat16_matches_float32_computation(activation, tmp_path):
    cfg = TranscoderConfig(D_IN, D_OUT, L, activation=activation, k=K_BY_ACT[activation], dtype="bfloat16")
    model, x = Transcoder(cfg), inputs().bfloat16()
    out = model(x)
    out.y_hat.float().square().sum().backward()
    assert out.y_hat.dtype == torch.bfloat16 and model.W_dec.grad.dtype == torch.bfloat16
    reference = model.decode(model.encode(x)).float()
    torch.testing.assert_close(out.y_hat.float(), reference, rtol=2e-2, atol=2e-2)
    model.save(tmp_path)
    assert Transcoder.load(tmp_path).W_dec.dtype == torch.bfloat16


def test_relu_acts_are_relu_of_pre_acts():
    out = make("relu")(inputs())
    assert (out.acts >= 0).all() and (out.pre_acts < 0).any()
    torch.testing.assert_close(out.acts, out.pre_acts.clamp_min(0))


def test_topk_keeps_the_k_largest_per_row():
    out = make("topk")(inputs())
    n_positive = (out.pre_acts > 0).sum(1)
    assert torch.equal((out.acts != 0).sum(1), n_positive.clamp(max=K))  # ReLU after TopK
    kth_largest = out.pre_acts.topk(K, dim=1).values[:, -1:]
    assert ((out.acts != 0) <= (out.pre_acts >= kth_largest)).all()
    assert out.top_idx.shape == out.top_vals.shape == (B, K)
    torch.testing.assert_close(out.acts.gather(1, out.top_idx), out.top_vals)


def test_batchtopk_keeps_k_times_batch_largest_in_total():
    model = make("batchtopk")
    with torch.no_grad():
        model.b_enc.fill_(10.0)  # every pre-activation positive, so ReLU removes none
    out = model(inputs())
    assert int((out.acts != 0).sum()) == K * B
    cutoff = out.pre_acts.flatten().topk(K * B).values[-1]
    torch.testing.assert_close(out.acts, out.pre_acts * (out.pre_acts >= cutoff))
    assert out.top_idx is None and out.top_vals is None


def test_batchtopk_eval_uses_running_threshold():
    model, x = make("batchtopk"), inputs()
    assert model.threshold < 0
    acts = model(x).acts
    assert model.threshold.item() == pytest.approx(acts[acts > 0].min().item())  # first update copies
    model.eval()
    out = model(x)
    torch.testing.assert_close(out.acts, out.pre_acts * (out.pre_acts > model.threshold))


def test_sparse_topk_decoder_gradients_match_dense_path():
    model, x = make("topk", skip=True), inputs()
    y = torch.randn(B, D_OUT, dtype=torch.float64)
    mse_loss(model(x).y_hat, y).backward()
    sparse = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    mse_loss(model.decode(model.encode(x), x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(sparse[name], p.grad, msg=name)


def offset_pattern(offsets):
    """[B, L] with offsets[(b + i) % len(offsets)] at row b, column i: every latent sees each one."""
    idx_BL = (torch.arange(B)[:, None] + torch.arange(L)) % len(offsets)
    return torch.tensor(offsets, dtype=torch.float64)[idx_BL]


def jumprelu_on_identity(x_BL):
    """A jumprelu transcoder whose pre-activations equal its input."""
    model = make("jumprelu", d_in=L)
    with torch.no_grad():
        model.W_enc.copy_(torch.eye(L))
        model.b_enc.zero_()
        model.log_threshold.copy_(torch.linspace(-1, 0, L, dtype=torch.float64))  # theta in [1/e, 1]
    return model, x_BL.clone().requires_grad_()


def test_jumprelu_ste_gradients_match_paper_formula():
    eps = 0.001
    theta = torch.linspace(-1, 0, L, dtype=torch.float64).exp()
    # Some pre-activations inside theta +- eps/2, where the rectangle kernel is 1, some outside.
    pre = theta + offset_pattern([-0.4, 0.3, -0.7, 0.8]) * eps
    model, x = jumprelu_on_identity(pre)
    g = torch.randn(B, L, dtype=torch.float64)
    (model(x).acts * g).sum().backward()
    inside = ((pre - theta).abs() < eps / 2).double()
    # d acts / d theta = -(theta/eps) K((pre - theta)/eps); log_threshold adds a factor theta.
    expected_theta = (-(theta / eps) * inside * g).sum(0)
    torch.testing.assert_close(model.log_threshold.grad, expected_theta * theta)
    torch.testing.assert_close(x.grad, g * (pre > theta))
    torch.testing.assert_close(model(x).acts, pre * (pre > theta))


def test_jumprelu_l0_penalty_value_and_gradient():
    eps = 0.001
    theta = torch.linspace(-1, 0, L, dtype=torch.float64).exp()
    pre = theta + offset_pattern([-0.2, 0.45, -3.0, 2.0]) * eps
    model, x = jumprelu_on_identity(pre)
    penalty = model.l0_penalty(model(x).pre_acts)
    torch.testing.assert_close(penalty, (pre > theta).double().sum(1).mean())
    penalty.backward()
    inside = ((pre - theta).abs() < eps / 2).double()
    torch.testing.assert_close(model.log_threshold.grad, (-(1 / eps) * inside).sum(0) / B * theta)
    assert not x.grad.any()  # the paper's Step passes no gradient to the pre-activations
    with pytest.raises(ValueError, match="needs activation='jumprelu'"):
        make("relu").l0_penalty(pre)


def test_skip_term_and_missing_input():
    model, x = make("relu", skip=True), inputs()
    acts = model.encode(x)
    torch.testing.assert_close(model.decode(acts, x), acts @ model.W_dec + model.b_dec + x @ model.W_skip)
    with pytest.raises(ValueError, match="skip transcoder"):
        model.decode(acts)


def test_bad_input_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\[batch, d_in=12\]"):
        make("relu")(torch.randn(2, 3, D_IN, dtype=torch.float64))


def test_init_b_dec_sets_target_mean():
    model, y = make("relu"), torch.randn(B, D_OUT, dtype=torch.float64)
    model.init_b_dec(y)
    torch.testing.assert_close(model.b_dec.data, y.mean(0))


def test_normalize_decoder_and_remove_parallel_grad():
    model = make("topk")
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(L, 1, dtype=torch.float64) * 3)
    model.normalize_decoder_()
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(L, dtype=torch.float64))
    model.W_dec.grad = grad = torch.randn(L, D_OUT, dtype=torch.float64)
    original = grad.clone()
    model.remove_parallel_grad_()
    torch.testing.assert_close((model.W_dec.grad * model.W_dec).sum(1), torch.zeros(L, dtype=torch.float64))
    removed = original - model.W_dec.grad  # what was removed lies along each row
    torch.testing.assert_close(removed, (original * model.W_dec).sum(1, keepdim=True) * model.W_dec)


@pytest.mark.parametrize("activation, skip", [("topk", False), ("jumprelu", True), ("batchtopk", False)])
def test_save_load_round_trip(tmp_path, activation, skip):
    model, x = make(activation, skip), inputs()
    model(x)  # sets the batchtopk threshold buffer, which must survive the round trip
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Transcoder.load(tmp_path, expect=model.cfg)
    assert loaded.cfg == model.cfg
    for name, t in model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name
    assert all(p.requires_grad for p in loaded.parameters())
    model.eval()
    loaded.eval()
    assert torch.equal(model(x).y_hat, loaded(x).y_hat)


def test_load_errors(tmp_path):
    model = make("topk")
    model.save(tmp_path)
    wrong = dataclasses.replace(model.cfg, d_latent=L * 2, skip=True)
    with pytest.raises(ValueError, match=r"d_latent: saved 40, expected 80; skip: saved False"):
        Transcoder.load(tmp_path, expect=wrong)
    (tmp_path / "config.json").write_text(json.dumps(wrong.to_dict()))
    with pytest.raises(ValueError, match="W_dec: expected"):
        Transcoder.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Transcoder.load(tmp_path / "nowhere")


def gemma_scope_params(skip_key=None):
    rng = np.random.default_rng(0)
    params = dict(W_enc=rng.normal(size=(D_IN, L)), W_dec=rng.normal(size=(L, D_OUT)),
                  b_enc=rng.normal(size=L) * 0.1, b_dec=rng.normal(size=D_OUT),
                  threshold=rng.uniform(0.0, 1.0, size=L))
    if skip_key:
        params[skip_key] = rng.normal(size=(D_IN, D_OUT))
    return {name: a.astype(np.float32) for name, a in params.items()}


@pytest.mark.parametrize("skip_key", [None, "W_skip", "affine_skip_connection"])
def test_from_gemma_scope_matches_numpy_jumprelu(tmp_path, skip_key):
    p = gemma_scope_params(skip_key)
    np.savez(tmp_path / "params.npz", **p)
    model = Transcoder.from_gemma_scope(tmp_path / "params.npz")
    x = np.random.default_rng(1).normal(size=(B, D_IN)).astype(np.float32)
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = pre * (pre > p["threshold"])
    y_hat = acts @ p["W_dec"] + p["b_dec"] + (x @ p[skip_key] if skip_key else 0)
    out = model(torch.from_numpy(x))
    np.testing.assert_allclose(out.acts.detach().numpy(), acts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.y_hat.detach().numpy(), y_hat, rtol=1e-5, atol=1e-4)
    assert model.cfg.activation == "jumprelu" and model.cfg.skip == (skip_key is not None)


def test_from_gemma_scope_missing_key(tmp_path):
    p = gemma_scope_params()
    del p["threshold"]
    np.savez(tmp_path / "params.npz", **p)
    with pytest.raises(ValueError, match=r"lacks Gemma Scope keys \['threshold'\]"):
        Transcoder.from_gemma_scope(tmp_path / "params.npz")


def test_mse_and_l1_match_manual_sums():
    y_hat, y = torch.randn(3, 5), torch.randn(3, 5)
    manual = sum(((y_hat[b] - y[b]) ** 2).sum() for b in range(3)) / 3
    torch.testing.assert_close(mse_loss(y_hat, y), manual)
    with pytest.raises(ValueError, match="same shape"):
        mse_loss(y_hat, y[:, None])
    acts, W_dec = torch.randn(3, 4), torch.randn(4, 5)
    manual = sum(abs(acts[b, i]) * W_dec[i].norm() for b in range(3) for i in range(4)) / 3
    torch.testing.assert_close(l1_penalty(acts, W_dec), manual)


def test_auxk_matches_manual_computation_and_touches_only_dead_latents():
    torch.manual_seed(0)
    pre = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(6, 5, dtype=torch.float64)
    dead = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    loss = auxk_loss(pre, residual, W_dec, dead, k_aux=2)
    dead_ids = dead.nonzero().flatten().tolist()
    e_hat = torch.zeros(6, 5, dtype=torch.float64)
    for b in range(6):
        for i in sorted(dead_ids, key=lambda i: -pre[b, i].item())[:2]:
            e_hat[b] += max(pre[b, i].item(), 0.0) * W_dec[i].detach()
    manual = ((e_hat - residual) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    torch.testing.assert_close(loss.detach(), manual)
    loss.backward()
    assert not pre.grad[:, ~dead].any() and not W_dec.grad[~dead].any()
    assert pre.grad[:, dead].any() and W_dec.grad[dead].any()


def test_auxk_is_zero_without_dead_latents():
    pre, W_dec = torch.randn(6, 8), torch.randn(8, 5)
    loss = auxk_loss(pre, torch.randn(6, 5), W_dec, torch.zeros(8, dtype=torch.bool))
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="dead_L must be a bool tensor"):
        auxk_loss(pre, torch.randn(6, 5), W_dec, torch.zeros(8))


def test_fused_topk_backward_matches_dense_autograd():
    """The sparse backward of kit.model.topk_encoder gives the gradients plain autograd through topk gives."""
    from kit.model.topk_encoder import TopKEncode
    torch.manual_seed(3)
    x = torch.randn(64, 12, requires_grad=True)
    W = torch.randn(12, 40, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    g = torch.randn(64, 5)
    pre = torch.addmm(b, x, W)
    vals, idx = pre.topk(5, dim=1, sorted=False)
    (vals.clamp_min(0) * g).sum().backward()
    dense = [t.grad.clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None
    fvals, fidx, fpre = TopKEncode.apply(x, W, b, 5)
    assert torch.equal(fidx, idx) and torch.equal(fvals, vals.clamp_min(0)) and not fpre.requires_grad
    (fvals * g).sum().backward()
    for got, want in zip((x.grad, W.grad, b.grad), dense):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
