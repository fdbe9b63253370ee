"""Metrics with known answers on the real embedded model; streaming, BOS handling and memory on tiny models."""
import copy
import itertools
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from kit import distributed
from kit.interpret.evaluate import evaluate, splice_losses, unembed
from kit.lm.access import final_hidden
from kit.model.loss import fvu
from kit.lm.hooks import get_module, hook_points
from kit.memory import eval_peak_bytes, shape_from_config
from kit.lm.store import TranscoderActivationsStore
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig


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
    mlp = copy.deepcopy(store.model.model.layers[8].mlp)  # a copy: the traced module cannot run inside its own trace
    tokens, mask = store.tokens_for_contexts(store.holdout_indices)
    out = splice_losses(store.model, store.hooks, tokens, mask, {"clean": None, "exact": mlp.forward})
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


def test_evaluate_many_equals_evaluating_each(store):
    """A sweep's evaluation shares the clean and ablated passes: every metric equals evaluating alone."""
    from kit.interpret.evaluate import evaluate_many
    torch.manual_seed(3)
    tcs = [Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=64 * (i + 1), activation="topk", k=4 + i))
           for i in range(2)]
    many = evaluate_many(tcs, store, dead_fracs=[0.25, 0.5], chunk_tokens=37)
    for tc, m, dead in zip(tcs, many, [0.25, 0.5]):
        alone = evaluate(tc, store, dead_frac=dead, chunk_tokens=37)
        assert m.keys() == alone.keys()
        for key, value in alone.items():
            assert m[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert many[0]["l0"] != many[1]["l0"], "each transcoder's own metrics, not the first one's"


def test_mean_transcoder_has_fvu_one_and_equals_mean_ablation(store):
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=64, activation="topk", k=4))
    x, y, mask = store.activations_for_contexts(store.holdout_indices)
    with torch.no_grad():
        tc.W_dec.zero_()
        tc.b_dec.copy_(y[mask].mean(0))
    m = evaluate(tc, store, chunk_tokens=37)
    assert m["fvu"] == pytest.approx(1.0, abs=1e-4)
    assert m["ce_spliced"] == pytest.approx(m["ce_mean"], abs=1e-5)
    assert m["ce_loss_recovered_vs_mean"] == pytest.approx(0.0, abs=1e-4)


# ---- tiny random models ------------------------------------------------------------------------------------
BOS = 1


def tiny(family="llama", vocab=97):
    import transformers as tf
    common = dict(vocab_size=vocab, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  hidden_size=16, intermediate_size=32, max_position_embeddings=256)
    config = {"llama": lambda: tf.LlamaConfig(**common),
              "gemma2": lambda: tf.Gemma2Config(**common, head_dim=8, attn_implementation="eager"),
              "gpt2": lambda: tf.GPT2Config(vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, n_positions=256,
                                            bos_token_id=BOS, eos_token_id=BOS)}[family]()
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def packed_tokens(n, T, vocab, seed=0):
    """BOS-separated documents with padding at the end of some contexts; the mask is False on BOS and padding."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (n, T), generator=gen)
    tokens[:, 0] = BOS
    tokens[::2, T // 3] = BOS  # a second document starts mid-context
    mask = tokens != BOS
    mask[1::3, T - T // 4:] = False  # padding
    tokens[~mask & (tokens != BOS)] = 0
    return tokens, mask


class TinyStore:
    """The parts of a store `evaluate` reads, over fixed token contexts of a tiny model."""

    def __init__(self, model, tokens, mask, lm_batch):
        self.model, self.hooks = model, hook_points(model, 1)
        self.tokens, self.mask = tokens, mask
        self.config = SimpleNamespace(lm_batch=lm_batch, ctx_len=tokens.shape[1])
        self.holdout_indices = list(range(len(tokens)))

    def tokens_for_contexts(self, idx):
        return self.tokens[idx], self.mask[idx]

    @torch.inference_mode()
    def activations_for_contexts(self, idx):
        """Plain PyTorch hooks (nnsight traces do not run in threads) and no unembedding (no [B, T, V] logits)."""
        seen, src = {}, get_module(self.model, self.hooks.in_path)
        handles = [src.register_forward_pre_hook(lambda m, args: seen.update(x=args[0])),
                   get_module(self.model, self.hooks.out_path).register_forward_hook(
                       lambda m, args, out: seen.update(y=out))]
        try:
            final_hidden(self.model, self.hooks, self.tokens[idx])
        finally:
            for h in handles:
                h.remove()
        return self.hooks.transform_input(seen["x"]), seen["y"], self.mask[idx]


def tiny_transcoder():
    torch.manual_seed(1)
    return Transcoder(TranscoderConfig(d_in=16, d_out=16, d_latent=64, activation="topk", k=4))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_final_hidden_and_unembed_give_the_models_own_logits(family):
    model = tiny(family)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        model.config.final_logit_softcapping = 0.5 if family == "gemma2" else None  # make the softcap bite
        hidden = final_hidden(model, hook_points(model, 1), ids)
        torch.testing.assert_close(unembed(model, hidden), model(ids).logits.float())


def test_predictions_at_or_of_bos_and_padding_are_not_scored():
    """Scored: the prediction at i of token i+1 iff mask[i] and mask[i+1] (mask is False on BOS and padding)."""
    model = tiny()
    tokens, mask = packed_tokens(6, 24, 97)
    with torch.no_grad():
        logp = F.log_softmax(model(tokens).logits[:, :-1].float(), -1)
    ce_NT = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    want = ce_NT[mask[:, :-1] & mask[:, 1:]].mean().item()
    old_rule = ce_NT[mask[:, 1:]].mean().item()  # counted the prediction made at a BOS
    assert abs(want - old_rule) > 1e-3, "the contexts must tell the two rules apart"
    got = splice_losses(model, hook_points(model, 1), tokens, mask, {"clean": None}, lm_batch=4, chunk_tokens=7)
    assert got["clean"]["ce"] == pytest.approx(want, rel=1e-6)


def assert_same(got: dict, want: dict, rel: float) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == (value if value is None else pytest.approx(value, rel=rel, abs=1e-12, nan_ok=True)), key


def test_chunked_evaluation_equals_unchunked_and_dense_fvu():
    model = tiny()
    tokens, mask = packed_tokens(10, 32, 97)
    store, tc = TinyStore(model, tokens, mask, lm_batch=4), tiny_transcoder()
    whole, chunked = evaluate(tc, store, chunk_tokens=10**6), evaluate(tc, store, chunk_tokens=7)
    assert_same(chunked, whole, rel=1e-6)
    x, y, m = store.activations_for_contexts(store.holdout_indices)
    with torch.no_grad():
        out = tc(x[m])
    assert whole["fvu"] == pytest.approx(fvu(y[m], out.y_hat).item(), rel=1e-5)
    assert whole["l0"] == pytest.approx((out.acts > 0).sum(-1).float().mean().item(), rel=1e-6)
    assert whole["eval_tokens"] == int(m.sum())


def test_ranks_sums_merge_to_the_single_rank_result(monkeypatch):
    """Two ranks (threads standing in for torchrun processes) each evaluate half and all-reduce the sums.

    lm_batch=1: a context's fp32 forward then never depends on which contexts share its batch, so only the
    float64 summation order differs."""
    model = tiny()
    tokens, mask = packed_tokens(9, 32, 97)
    store, tc = TinyStore(model, tokens, mask, lm_batch=1), tiny_transcoder()
    single = evaluate(tc, store, chunk_tokens=11)
    world, local, barrier, parts = 2, threading.local(), threading.Barrier(2), {}

    def reduce(t, op="sum"):
        parts[local.rank] = t.clone()
        barrier.wait()
        total = parts[0] + parts[1]
        barrier.wait()
        return total

    monkeypatch.setattr(distributed, "rank_world", lambda: (local.rank, world))
    monkeypatch.setattr(distributed, "reduce_across_ranks", reduce)
    results = [None] * world

    def rank_main(r):
        local.rank = r  # each rank its own model copy: the splice hooks of one must not fire in the other
        own = TinyStore(copy.deepcopy(model), tokens, mask, lm_batch=1)
        results[r] = evaluate(tc, own, chunk_tokens=11, across_ranks=True)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results:
        assert_same(res, single, rel=1e-12)


def peak_bytes(fn) -> int:
    """Peak of live CPU tensor bytes allocated while `fn` runs, from the profiler's allocation records."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return max(itertools.accumulate(e.nbytes() for e in events), default=0)


def test_peak_bytes_sees_a_large_tensor():
    assert peak_bytes(lambda: torch.empty(10**6) + 1) >= 8e6  # the tensor and the sum, 4 MB each


@pytest.mark.parametrize("lm_batch, ctx_len", [(2, 32), (4, 64)])
def test_evaluation_peak_stays_under_the_documented_bound_at_a_large_vocabulary(lm_batch, ctx_len):
    vocab, chunk = 50_000, 16
    model = tiny(vocab=vocab)
    tokens, mask = packed_tokens(2 * lm_batch, ctx_len, vocab)
    store, tc = TinyStore(model, tokens, mask, lm_batch), tiny_transcoder()
    bound = eval_peak_bytes(shape_from_config(model.config), lm_batch, ctx_len, 4, 64, chunk)
    peak = peak_bytes(lambda: evaluate(tc, store, chunk_tokens=chunk))
    unchunked = peak_bytes(lambda: evaluate(tc, store, chunk_tokens=lm_batch * ctx_len))
    print(f"B={lm_batch} T={ctx_len} V={vocab} C={chunk}: peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB, "
          f"unchunked {unchunked / 1e6:.1f} MB")
    assert peak <= bound
    assert unchunked > bound, "the measurement must be able to fail: whole-batch logits exceed the bound"
