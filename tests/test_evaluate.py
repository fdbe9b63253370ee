"""Metrics with known answers on the real embedded model."""
import pytest
import torch

from kit.data import stack_tokens
from kit.evaluate import evaluate, fvu, splice_losses
from kit.store import TranscoderActivationsStore
from kit.transcoder import Transcoder, TranscoderConfig


def test_fvu_of_mean_predictor_is_one_and_perfect_is_zero():
    y = torch.randn(500, 8) * 3 + 5
    assert fvu(y, y.mean(0).expand_as(y)).item() == pytest.approx(1.0, abs=1e-6)
    assert fvu(y, y).item() == 0.0
    # Centred on the target's mean, not on zero: an offset target does not inflate explained variance.
    assert fvu(y, torch.zeros_like(y)).item() > 1.0


@pytest.fixture(scope="module")
def store(embedded, stdlib_texts):
    model, tok = embedded
    return TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, ctx_len=48, holdout_contexts=6,
                                      batch_size=64, refill_contexts=8, shuffle_contexts=16)


def test_exact_replacement_gives_zero_delta_ce(store):
    """Replacing the MLP output by the MLP's own output changes nothing: ΔCE = 0 and KL = 0."""
    mlp = store.model.model.layers[8].mlp
    tokens, mask = stack_tokens([store.contexts[i] for i in store.holdout_indices])
    mask[:, 0] = False
    out = splice_losses(store.model, store.hooks, tokens, mask, {"clean": None, "exact": mlp.forward})  # forward: no hooks
    assert out["exact"]["ce"] == pytest.approx(out["clean"]["ce"], abs=1e-5)
    assert out["exact"]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_zero_transcoder_equals_zero_ablation_and_metrics_are_consistent(store):
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=64, activation="topk", k=4))
    with torch.no_grad():
        tc.W_dec.zero_()
        tc.b_dec.zero_()
    m = evaluate(tc, store)
    assert m["ce_spliced"] == pytest.approx(m["ce_zero"], abs=1e-5)
    assert m["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert m["ce_zero"] > m["ce_clean"], "zero-ablating layer 8's MLP should hurt the real model"
    assert m["explained_variance"] == pytest.approx(1 - m["fvu"])


def test_mean_transcoder_has_fvu_one_and_equals_mean_ablation(store):
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=64, activation="topk", k=4))
    x, y, mask = store.activations_for_contexts(store.holdout_indices)
    with torch.no_grad():
        tc.W_dec.zero_()
        tc.b_dec.copy_(y[mask].mean(0))
    m = evaluate(tc, store)
    assert m["fvu"] == pytest.approx(1.0, abs=1e-4)
    assert m["ce_spliced"] == pytest.approx(m["ce_mean"], abs=1e-5)
    assert m["ce_loss_recovered_vs_mean"] == pytest.approx(0.0, abs=1e-4)
