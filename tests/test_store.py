"""The activation store on the real embedded model: provenance, mixing, BOS handling, resume, bad input."""
import datasets
import numpy as np
import pytest
import torch

from kit.lm.store import TranscoderActivationsStore

from kit.config import StoreConfig

OPTS = dict(ctx_len=64, batch_size=256, refill_contexts=16, shuffle_contexts=4096, holdout_contexts=4,
            holdout_share=0.25, domain_field="dom")


@pytest.fixture(scope="module")
def store(embedded, stdlib_texts):
    model, tok = embedded
    return TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **OPTS)


@pytest.fixture(scope="module")
def batch(store):
    return store.get_batch_with_tokens()


def test_shapes_and_types(store, batch):
    assert batch.x_in.shape == (256, 576) and batch.y_out.shape == (256, 576)
    for field in ("token_ids", "doc_ids", "positions", "doc_positions", "domains", "global_ids"):
        assert getattr(batch, field).shape == (256,), field


def test_provenance_matches_plain_forward_hooks(store, batch, embedded):
    """Rebuild each sampled row's context from its global id and re-run the model with plain hooks."""
    model, _ = embedded
    mlp = model.model.layers[8].mlp
    for row in torch.randperm(256, generator=torch.Generator().manual_seed(1))[:12].tolist():
        gid = int(batch.global_ids[row])
        ids = store.context(gid, before=10_000, after=0)  # back to BOS, up to and including the token
        assert ids[0] == store.tokenizer.bos_token_id and ids[-1] == int(batch.token_ids[row])
        assert len(ids) - 1 == int(batch.positions[row])
        seen = {}
        handle = mlp.register_forward_hook(lambda m, i, o: seen.update(x=i[0][0, -1], y=o[0, -1]))
        with torch.no_grad():
            model(torch.tensor([ids]))
        handle.remove()
        torch.testing.assert_close(batch.x_in[row], seen["x"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batch.y_out[row], seen["y"], rtol=1e-4, atol=1e-4)


def test_batch_mixes_documents_and_domains(batch):
    assert batch.doc_ids.unique().numel() >= 10
    assert batch.domains.unique().numel() == 4


def test_no_bos_or_padding_rows(store, batch):
    bos = store.tokenizer.bos_token_id
    assert (batch.token_ids != bos).all() and (batch.positions >= 1).all()
    for g, p in zip(batch.global_ids.tolist(), batch.positions.tolist()):
        assert store.context_at(g // 64).trained_mask()[p], "a BOS or padding position came out"


def test_context_is_clipped_to_its_own_context(store, batch):
    gid = int(batch.global_ids[0])
    pos = gid % 64
    assert len(store.context(gid, before=3, after=2)) <= 6
    full = store.context(gid, before=10_000, after=10_000)
    seg = store.context_at(gid // 64).segment_at(pos)
    assert full[0] == store.tokenizer.bos_token_id and len(full) == seg.stop - seg.start + 1
    assert full[pos - seg.start + 1] == int(batch.token_ids[0])
    assert store.tokenizer.decode([full[pos]]) in store.decode_context(gid, 5, 5)


def test_seeded_reproducible_and_resumable(embedded, stdlib_texts):
    model, tok = embedded
    a = TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **OPTS)
    b = TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **OPTS)
    for _ in range(2):
        a.get_batch_with_tokens()
    state = a.state_dict()
    b.load_state_dict(state)
    for _ in range(12):  # crosses refills and wraps around the exhausted source
        for x, y in zip(a.get_batch_with_tokens(), b.get_batch_with_tokens()):
            assert torch.equal(x, y)


def test_resume_with_other_settings_is_refused(store, embedded, stdlib_texts):
    model, tok = embedded
    other = TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **{**OPTS, "batch_size": 128})
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(store.state_dict())


def test_storage_dtype(embedded, stdlib_texts):
    model, tok = embedded
    s = TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **{**OPTS, "dtype": "bfloat16"})
    assert s.get_batch()[0].dtype == torch.bfloat16


@pytest.mark.parametrize("source, options, message", [
    (datasets.Dataset.from_dict({"text": []}), {}, "empty|no contexts"),
    (datasets.Dataset.from_dict({"body": ["some text"]}), {}, "field 'text' is not in the source.*body"),
    (datasets.Dataset.from_dict({"text": ["too short"]}), {}, "shorter than min_tokens"),
    (datasets.Dataset.from_dict({"text": ["x " * 500]}), {"domain_field": "label"}, "field 'label'"),
])
def test_bad_sources_are_explained(embedded, source, options, message):
    model, tok = embedded
    with pytest.raises(ValueError, match=message):
        TranscoderActivationsStore(model, source, 8, tokenizer=tok, **{**OPTS, "domain_field": None, **options})


def test_layer_out_of_range(embedded, stdlib_texts):
    model, tok = embedded
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.29"):
        TranscoderActivationsStore(model, stdlib_texts, 30, tokenizer=tok, **OPTS)


def test_config_validation():
    with pytest.raises(ValueError, match="dtype"):
        StoreConfig(dtype="int8")
    with pytest.raises(ValueError, match="min_tokens"):
        StoreConfig(ctx_len=8, min_tokens=8)


def test_held_out_documents_are_whole_random_and_never_trained(store):
    held = {int(d) for d in np.unique(store.token_provenance(store.holdout_indices).doc_ids) if d >= 0}
    assert held and all(store.stream.is_held_out(d) for d in held)
    trained = set()
    for _ in range(6):
        trained |= set(store.get_batch_with_tokens().doc_ids.tolist())
    assert trained and not trained & held, "a held-out document was trained on"
    assert held != set(range(len(held))), "held-out documents are drawn at random, not the first of the stream"


def test_mixing_spreads_batches_over_more_contexts(embedded, stdlib_texts):
    """Without mixing, a refill's few contexts feed several batches in a row (highly correlated rows); a buffer of
    four refills spreads every batch over about four times as many contexts."""
    model, tok = embedded
    def contexts_per_batch(mix):
        s = TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **{**OPTS, "mix_refills": mix,
                                                                                "batch_size": 128})
        return np.mean([len(set((s.get_batch_with_tokens().global_ids // 64).tolist())) for _ in range(6)])
    assert contexts_per_batch(4) > 2.5 * contexts_per_batch(1)


def test_consumed_is_exactly_the_tokens_handed_out(embedded, stdlib_texts):
    model, tok = embedded
    s = TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **OPTS)
    handed = set()
    for _ in range(5):  # ends inside a chunk, with refills only partly handed out
        handed |= set(s.get_batch_with_tokens().global_ids.tolist())
    got = set()
    for index, mask in s.consumed().items():
        mask = s.context_at(index).trained_mask() if mask is None else mask
        got |= {index * 64 + int(p) for p in np.flatnonzero(mask)}
    assert got == handed


def test_ranks_own_disjoint_shards_of_one_stream(embedded, stdlib_texts):
    model, tok = embedded
    one = TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, **OPTS)
    ranks = [TranscoderActivationsStore(model, stdlib_texts, 8, tokenizer=tok, shard=(r, 2), **OPTS) for r in (0, 1)]
    n = 20
    shards = [set(r.train_contexts(n)) for r in ranks]
    assert not shards[0] & shards[1] and all(r.owns(i) for r, sh in zip(ranks, shards) for i in sh)
    assert shards[0] | shards[1] == {one.stream.train_index(m) for m in range(2 * n)} or len(shards[0] | shards[1]) == 2 * n
    for r, sh in zip(ranks, shards):  # the same context, token for token, whichever store holds it
        i = min(sh)
        assert np.array_equal(r.context_at(i).token_ids, one.context_at(i).token_ids)
    with pytest.raises(ValueError, match="belongs to rank"):
        ranks[0].context_at(min(shards[1]))
    assert ranks[0].holdout_indices == one.holdout_indices


def test_padding_share_is_measured(store):
    assert 0 <= store.padding_share() < 0.05, "packed contexts leave padding only before the source ends"
