"""The training loop on synthetic data: learning a planted dictionary, exact resume, failure modes."""
import csv

import pytest
import torch

from synthetic import PlantedDictionaryStore
from kit.train.trainer import Trainer
from kit.config import TrainConfig
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig


def make(run_dir=None, activation="topk", steps=30, seed=0, **train):
    torch.manual_seed(seed)
    tc = Transcoder(TranscoderConfig(d_in=64, d_out=64, d_latent=256, activation=activation,
                                     k=4 if "topk" in activation else None))
    cfg = TrainConfig(steps=steps, lr=3e-3, checkpoint_every=8, log_every=4, dead_window=2048, **train)
    config = {"cfg": cfg.__dict__, "tc": tc.cfg.to_dict()}
    return Trainer(tc, PlantedDictionaryStore(seed=seed), cfg, run_dir=run_dir, config_dict=config)


def test_recovers_planted_atoms():
    trainer = make(steps=250)
    trainer.fit(progress=False)
    B = trainer.store.B
    cos = torch.nn.functional.normalize(trainer.tc.W_dec.detach(), dim=1) @ B.T  # [latents, atoms]
    recovered = (cos.max(0).values > 0.9).float().mean().item()
    assert recovered > 0.8, f"only {recovered:.0%} of planted atoms recovered with cosine > 0.9"


@pytest.mark.parametrize("activation, extra", [("topk", {}), ("relu", {"sparsity_coeff": 1e-3}),
                                               ("topk", {"b_enc_lr_scale": 10.0, "center_input": True})])
def test_killed_and_resumed_run_is_bit_identical(tmp_path, activation, extra):
    full = make(tmp_path / "full", activation, **extra)
    full.fit(progress=False)
    first = make(tmp_path / "cut", activation, **extra)
    first.fit(stop_at=21, progress=False)  # "killed" after step 21; the last checkpoint is at 21
    (tmp_path / "cut" / "checkpoints" / "step_0000021").rename(tmp_path / "cut" / "checkpoints" / "gone")
    (tmp_path / "cut" / "checkpoints" / "latest").write_text("step_0000016")  # as if killed before saving 21
    resumed = make(tmp_path / "cut", activation, seed=0, **extra)
    assert resumed.resume() and resumed.step == 16
    resumed.fit(progress=False)
    for name, p in full.tc.state_dict().items():
        assert torch.equal(p, resumed.tc.state_dict()[name]), f"{name} differs after resume"
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "cut" / "history.csv"))]
    assert steps == sorted(set(steps)), "history has duplicated steps after the resume"


def test_resume_with_other_config_is_refused(tmp_path):
    make(tmp_path, steps=8).fit(progress=False)
    other = make(tmp_path, steps=8, grad_clip=0.5)
    with pytest.raises(ValueError, match="grad_clip"):
        other.resume()


def test_nan_loss_names_the_step_and_saves_nothing_poisoned(tmp_path):
    trainer = make(tmp_path, steps=20)
    trainer.fit(stop_at=8, progress=False)
    saved = {k: v.clone() for k, v in trainer.tc.state_dict().items()}
    trainer.store.A[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="at step 8"):
        trainer.fit(progress=False)
    reloaded = make(tmp_path, steps=20)
    assert reloaded.resume() and reloaded.step == 8
    for k, v in reloaded.tc.state_dict().items():
        assert torch.equal(v, saved[k])


def test_checkpoints_are_pruned_and_atomic(tmp_path):
    make(tmp_path, steps=30).fit(progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_0000024", "step_0000030"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_auxk_revives_dead_latents():
    """Three quarters of the latents start out-competed (tiny encoder columns): without AuxK they never win a
    top-k slot, so they get no gradient and stay dead; AuxK trains them on the residual until they fire."""
    runs = {}
    for coeff in (1 / 32, 0.0):
        trainer = make(steps=100, auxk_coeff=coeff)
        with torch.no_grad():
            trainer.tc.W_enc[:, :192] *= 0.05
        trainer.fit(progress=False)
        runs[coeff] = trainer.dead_fraction
    assert runs[0.0] > 0.6, runs
    assert runs[1 / 32] < runs[0.0] - 0.15, runs


def test_history_columns(tmp_path):
    make(tmp_path, steps=8).fit(progress=False)
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [int(r["step"]) for r in rows] == [4, 8]
    assert set(rows[0]) == {"step", "tokens", "lr", "loss", "fvu", "l0", "dead_frac", "tokens_per_s"}
    assert float(rows[0]["l0"]) <= 4


def test_latents_joining_auxk_get_fresh_adam_moments():
    """With auxk_reset_adam, a latent's Adam moments are zeroed on the step it joins AuxK's set (and only
    then): the other latents keep theirs, and AuxK's next update of it is not shrunk by its old second moment."""
    t = make(steps=12, auxk_reset_adam=True, auxk_window=64)
    joined = []
    for step in range(12):
        before = t.since_fired >= 64
        batch = t.store.get_batch_with_tokens()
        t.train_step(batch.x_in, batch.y_out, step)
        t.step += 1
        new = (t.since_fired >= 64) & ~before
        v = t.optimizer.state[t.tc.W_enc]["exp_avg_sq"]
        if new.any():
            joined.append(step)
            assert (v[:, new] == 0).all() and (t.optimizer.state[t.tc.W_dec]["exp_avg"][new] == 0).all()
            assert (t.optimizer.state[t.tc.b_enc]["exp_avg_sq"][new] == 0).all()
            assert (v[:, ~(t.since_fired >= 64)] != 0).any(), "alive latents keep their moments"
    assert joined, "some latent must join AuxK's set in this run (the test would check nothing)"
    off = make(steps=12, auxk_reset_adam=False, auxk_window=64)
    for step in range(12):
        batch = off.store.get_batch_with_tokens()
        off.train_step(batch.x_in, batch.y_out, step)
    assert (off.optimizer.state[off.tc.W_enc]["exp_avg_sq"] != 0).all(0).float().mean() > \
        (t.optimizer.state[t.tc.W_enc]["exp_avg_sq"] != 0).all(0).float().mean()


@pytest.mark.parametrize("skip", [False, True])
def test_export_folds_the_input_shift_and_scales(skip):
    """The exported transcoder on raw x equals the trained one on the centred, scaled x (then unscaled), for a
    store whose inputs carry a large mean offset; center_input=False keeps a zero shift."""
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=64, d_out=48, d_latent=256, activation="topk", k=4, skip=skip))
    cfg = TrainConfig(steps=6, lr=3e-3, log_every=3, dead_window=2048, center_input=True)
    store = PlantedDictionaryStore(d_out=48, seed=1)
    offset = 3 * torch.randn(64)
    t = Trainer(tc, store, cfg)
    for step in range(6):
        b = store.get_batch_with_tokens()
        t.train_step(b.x_in + offset, b.y_out, step)
    x = store.get_batch_with_tokens().x_in + offset
    mean = (store.codes(0) @ store.A + offset).mean(0).double()
    assert torch.allclose(t.shift, mean * t.scales[0], rtol=1e-6), "shift = the first batch's scaled mean"
    with torch.no_grad():
        inner = t.tc(x * float(t.scales[0]) - t.shift.float())
        out = t.export()(x)
    assert torch.equal(out.top_idx, inner.top_idx)
    assert torch.allclose(out.y_hat, inner.y_hat / float(t.scales[1]), atol=1e-4, rtol=1e-4)
    assert torch.allclose(out.top_vals, inner.top_vals, atol=1e-4, rtol=1e-4)
    off = Trainer(Transcoder(tc.cfg), PlantedDictionaryStore(d_out=48), TrainConfig(steps=1, center_input=False))
    b = off.store.get_batch_with_tokens()
    off.train_step(b.x_in + offset, b.y_out, 0)
    assert not off.shift.any()


def test_b_enc_lr_scale_multiplies_the_bias_step_only():
    """Adam's first step moves each parameter by ~lr * sign(grad): with b_enc_lr_scale=30 the bias moves 30x as far
    and every other parameter exactly as far as without it; the schedule keeps the ratio."""
    moved = {}
    for scale in (1.0, 30.0):
        t = make(steps=40, b_enc_lr_scale=scale)
        before = {n: p.detach().clone() for n, p in t.tc.named_parameters()}
        batch = t.store.get_batch_with_tokens()
        t.train_step(batch.x_in, batch.y_out, 0)
        moved[scale] = {n: p.detach() - before[n] for n, p in t.tc.named_parameters()}
        lrs = t.scheduler.get_last_lr()  # one group per parameter when the scale is not 1; b_enc is the second
        assert len(lrs) == 1 if scale == 1 else lrs[1] == pytest.approx(scale * lrs[0]), lrs
    assert torch.allclose(moved[30.0]["b_enc"], 30 * moved[1.0]["b_enc"], rtol=1e-3, atol=1e-9)
    assert moved[1.0]["b_enc"].abs().max() > 0
    for name in ("W_enc", "W_dec", "b_dec"):
        assert torch.equal(moved[30.0][name], moved[1.0][name]), name


def test_a_config_saved_before_a_changed_default_counts_as_the_old_behaviour():
    """center_input and b_enc_lr_scale came with new defaults (True, 10): a config saved without them was trained
    uncentred at 1x, so resuming it under today's defaults is refused with the fields named, and accepted when
    they are set back; a field added without a behaviour change (absent = default) still passes."""
    from kit.config import RunConfig, config_diff
    now = RunConfig(name="x").to_dict()
    old = {**now, "train": {k: v for k, v in now["train"].items() if k not in ("center_input", "b_enc_lr_scale")}}
    diff = config_diff(old, now)
    assert any(d.startswith("train.center_input: checkpoint False, now True") for d in diff), diff
    assert any(d.startswith("train.b_enc_lr_scale: checkpoint 1.0, now 10.0") for d in diff), diff
    back = {**now, "train": {**now["train"], "center_input": False, "b_enc_lr_scale": 1.0}}
    assert config_diff(old, back) == []
    older = {**now, "train": {k: v for k, v in now["train"].items() if k != "auxk_reset_adam"}}
    assert config_diff(older, now) == []
