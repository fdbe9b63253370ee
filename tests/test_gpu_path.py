"""The GPU target's path at toy size on the CPU: a Gemma-2-shaped model (random weights, built locally) and a
Pile-like local set (nested `meta.pile_set_name`, documents of very different lengths), run end to end through
the `gemma-2-2b-l8` preset's code path: eager attention, Gemma Scope hook points, packing, the mixing buffer, the
chunked spliced evaluation and the document-level analysis."""
import numpy as np
import pandas as pd
import pytest
import torch

from kit.corpus.pile_like import write_pile_like
from kit.interpret.interpretation import Interpretation
from kit.presets import GEMMA_2_2B_L8
from kit.run import train_run


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory, embedded):
    """A 10-layer Gemma-2 of width 64 with the embedded tokenizer, saved as a local folder."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    _, tok = embedded
    folder = tmp_path_factory.mktemp("tiny-gemma")
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=10,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                       sliding_window=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    Gemma2ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_gemma_shaped_run_on_a_pile_like_set(tmp_path, tiny_gemma):
    source = write_pile_like(tmp_path / "pile.jsonl", n_docs=300, seed=2)
    config = GEMMA_2_2B_L8.override([
        f"model={tiny_gemma}", f"source={source}", "model_dtype=float32", "latents.d_latent=256", "latents.k=8",
        "store.ctx_len=256", "store.batch_size=512", "store.refill_contexts=8", "store.lm_batch=4",
        "store.holdout_contexts=12", "store.holdout_share=0.2", "store.mix_refills=2", "store.dtype=float32",
        "train.steps=8", "train.checkpoint_every=4", "train.log_every=2", "train.dead_window=4096",
        "collector.k=4", "collector.window_before=12", "collector.window_after=4", "eval_contexts=6",
        "analysis.min_firing_documents=1"])
    metrics = train_run(config, tmp_path / "run", progress=False)
    assert metrics["padding_share"] < 0.01, "packing: the language model runs on no padding"
    for key in ("fvu", "l0", "ce_clean", "ce_spliced", "kl", "topk_retention"):
        assert np.isfinite(metrics[key]), key
    assert metrics["tokens_seen"] == 8 * 512
    samples = pd.read_parquet(tmp_path / "run" / "samples.parquet")
    assert set(samples.phase) == {"training", "final", "heldout"}
    assert set(samples.domain) <= {"Github", "ArXiv", "PubMed Abstracts", "HackerNews", "FreeLaw", "Pile-CC",
                                   "Books3", "EuroParl", "Ubuntu IRC", "Wikipedia (en)"}
    interpretation = Interpretation.load(tmp_path / "run")
    assert interpretation.eval_documents >= 2 and "topic_specialist" in interpretation.specialization
    assert (tmp_path / "run" / "report.html").exists()
