"""Text patterns against hand counts, the logit lens against the models' own final norm and unembedding, labels."""
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from kit.interpret.patterns import (direct_logits, latent_labels, length_stats, logit_lens, logit_lens_caveat, top_rows,
                          top_tokens)
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig


class IdTokenizer:
    """Decodes id i to the i-th entry of a small vocabulary (or '<i>')."""

    vocab = [" the", " cat", "s", ",", " sat", " un", "believ", "able", "\n", " The"]

    def batch_decode(self, rows):
        return ["".join(self.vocab[i] if i < len(self.vocab) else f"<{i}>" for i in r) for r in rows]


SAMPLES = pd.DataFrame({
    "latent": [0, 0, 1],
    "context_tokens": [[0, 1, 2, 3], [5, 6, 7, 4, 0], [9, 1, 8, 0]],
    "context_acts": [[0.0, 2.0, 1.0, 3.0], [0.5, 2.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 4.0]],
})


def brute_tokens(samples, per_latent, weight):
    scores = defaultdict(lambda: [0.0, 0])
    for _, row in samples.iterrows():
        for tok, act in zip(row["context_tokens"], row["context_acts"]):
            text = IdTokenizer.vocab[tok].strip()
            w = act if weight == "activation" else 1.0
            if w > 0 and any(c.isalnum() for c in text):
                key = (row["latent"], text) if per_latent else text
                scores[key][0] += w
                scores[key][1] += 1
    return scores


@pytest.mark.parametrize("weight", ["activation", "count"])
@pytest.mark.parametrize("per_latent", [True, False])
def test_top_tokens_against_brute_force(weight, per_latent):
    got = top_tokens(SAMPLES, weight=weight, per_latent=per_latent, n=100, tokenizer=IdTokenizer())
    want = brute_tokens(SAMPLES, per_latent, weight)
    keys = list(zip(got["latent"], got["text"])) if per_latent else list(got["text"])
    assert sorted(keys) == sorted(want)
    for key, w, c in zip(keys, got["weight"], got["count"]):
        assert (w, c) == (pytest.approx(want[key][0]), want[key][1])
    group = got.groupby("latent") if per_latent else [(None, got)]
    for _, g in group:  # ranked by weight, descending
        assert g["rank"].tolist() == list(range(len(g))) and g["weight"].is_monotonic_decreasing


def test_top_words_join_tokens_and_take_the_largest_activation():
    words = top_tokens(SAMPLES, unit="word", tokenizer=IdTokenizer())
    latent0 = dict(zip(words.loc[words["latent"] == 0, "text"], words.loc[words["latent"] == 0, "weight"]))
    # 'cats' = ' cat' (2.0) + 's' (1.0) -> 2.0; 'unbelievable' -> max(0.5, 2, 1); ',' is skipped; 'the' sums 0 + 1.
    assert latent0 == {"cats": 2.0, "unbelievable": 2.0, "the": 1.0}
    assert words.loc[words["latent"] == 0, "text"].tolist() == ["cats", "unbelievable", "the"]  # ties by text


def test_token_strings_with_markers_work_without_a_tokenizer():
    samples = pd.DataFrame({"latent": [3], "context_tokens": [["Ġthe", "Ġcat", "Ċ", "▁dog"]],
                            "context_acts": [[1.0, 2.0, 5.0, 0.5]]})
    got = top_tokens(samples)
    assert got["text"].tolist() == ["cat", "the", "dog"] and got["latent"].tolist() == [3] * 3
    with pytest.raises(ValueError, match="tokenizer"):
        top_tokens(SAMPLES)


def test_length_stats_against_hand_counts():
    got = length_stats(SAMPLES, tokenizer=IdTokenizer())
    assert got.loc[("sample windows", "tokens")].tolist() == [3, pytest.approx(13 / 3), 4, 4, 5]
    # ' the cats,' = 2 words, ' unbelievable sat the' = 3, ' The cat\n the' = 3
    assert got.loc[("sample windows", "words"), "mean"] == pytest.approx(8 / 3)
    seg = lambda a, b: SimpleNamespace(start=a, stop=b)  # noqa: E731
    ctx = [SimpleNamespace(token_ids=np.array([99, 0, 1, 99]), segments=(seg(1, 3),)),  # BOS, 2 tokens, padding
           SimpleNamespace(token_ids=np.array([99, 4, 99, 4]), segments=(seg(1, 2), seg(3, 4)))]  # two documents
    store = SimpleNamespace(context_at=lambda i: ctx[i], tokenizer=IdTokenizer(), holdout_indices=[0, 1])
    got = length_stats(store=store)
    assert got.loc[("eval documents", "tokens"), "n"] == 3 and got.loc[("eval documents", "tokens"), "mean"] == 4 / 3
    assert got.loc[("eval documents", "words"), "max"] == 2


def tiny(kind):
    torch.manual_seed(0)
    common = dict(vocab_size=40, num_hidden_layers=2, num_attention_heads=2)
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40))
        norm = model.transformer.ln_f
    else:
        cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                              "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM)}[kind]
        cfg = cfg_cls(hidden_size=16, intermediate_size=32, num_key_value_heads=2, head_dim=8, **common)
        model = model_cls(cfg)
        norm = model.model.norm
    with torch.no_grad():  # random gains (and bias): the default ones would hide a missing gain
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    return model.eval(), norm


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt2"])
def test_direct_logits_equal_the_models_final_norm_and_unembedding(kind):
    model, norm = tiny(kind)
    tc = Transcoder(TranscoderConfig(d_in=16, d_out=16, d_latent=12, activation="topk", k=2))
    latents = [0, 5, 11]
    d = tc.W_dec[latents].detach()
    with torch.no_grad():
        full = model.get_output_embeddings()(norm(d))  # what the model computes from a residual equal to d
        if kind == "gpt2":  # undo LayerNorm's per-row scale and its bias, the same for every latent
            scale = torch.sqrt(d.var(-1, unbiased=False) + norm.eps)
            full = (full - model.get_output_embeddings()(norm.bias)) * scale[:, None]
        else:
            eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
            full = full * torch.sqrt(d.pow(2).mean(-1) + eps)[:, None]
    torch.testing.assert_close(direct_logits(tc, model, latents), full, rtol=1e-4, atol=1e-5)


def test_logit_lens_ranks_and_chunking_against_brute_force():
    model, _ = tiny("llama")
    tc = Transcoder(TranscoderConfig(d_in=16, d_out=16, d_latent=10, activation="topk", k=2))
    w = tc.W_dec.detach() * model.model.norm.weight.detach()
    brute = w @ model.lm_head.weight.detach().T
    got = logit_lens(tc, model, IdTokenizer(), k=3, chunk=4)  # chunks of 4, 4, 2
    for latent, g in got.groupby("latent"):
        assert g["promoted_id"].tolist() == brute[latent].argsort(descending=True)[:3].tolist()
        assert g["suppressed_id"].tolist() == brute[latent].argsort()[:3].tolist()
        np.testing.assert_allclose(g["promoted_logit"], brute[latent].sort(descending=True).values[:3], rtol=1e-5)
    pd.testing.assert_frame_equal(got, logit_lens(tc, model, IdTokenizer(), k=3, chunk=100))
    assert got.loc[got["promoted_id"] == 1, "promoted"].eq(" cat").all()


def test_caveat_counts_the_layers_after_the_decoder():
    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=30))
    assert "through 21 more layers" in logit_lens_caveat(model, 8)


def test_labels_are_deterministic_and_read_well():
    table = pd.DataFrame({"latent": [0, 1, 2, 3], "category": ["specialist", "generalist", "dead", "dense"],
                          "top_domain": ["medicine", "code", None, "news"]})
    words = pd.DataFrame({"latent": [0, 0, 0, 1, 1], "rank": [1, 0, 2, 0, 1],
                          "text": ["clinical", "patients", "trial", "the", "of"]})
    labels = latent_labels(table, words)
    assert labels.tolist() == ["medicine · patients, clinical", "generalist · the, of", "dead", "dense"]
    pd.testing.assert_series_equal(labels, latent_labels(table.copy(), words.sample(frac=1, random_state=0)))


def test_top_rows_keeps_one_phase_of_top_samples():
    df = pd.DataFrame({"latent": [0, 0, 0, 1], "kind": ["top", "interval", "top", "top"],
                       "phase": ["final", "final", "training", "final"]})
    assert top_rows(df)["latent"].tolist() == [0, 1]
    assert len(top_rows(df, phase=None)) == 3 and len(top_rows(df[["latent"]])) == 4


def test_symbols_are_kept_escaped_on_request_and_fill_empty_labels():
    samples = pd.DataFrame({"latent": [0, 1], "context_tokens": [[" end", "\n\n", " ", "\\"], [" the", " cat"]],
                            "context_acts": [[0.0, 3.0, 2.0, 1.0], [1.0, 0.5]]})
    assert top_tokens(samples)["latent"].tolist() == [1, 1]  # latent 0 fires only on symbols
    tokens = top_tokens(samples, symbols=True)
    assert tokens.loc[tokens["latent"] == 0, "text"].tolist() == ["\\n\\n", "␣", "\\"]
    table = pd.DataFrame({"latent": [0, 1], "category": ["specialist", "generalist"], "top_domain": ["medicine", "x"]})
    words = top_tokens(samples, unit="word")
    assert latent_labels(table, words).tolist() == ["medicine", "generalist · the, cat"]
    assert latent_labels(table, words, tokens=tokens).tolist() == ["medicine · \\n\\n, ␣", "generalist · the, cat"]
