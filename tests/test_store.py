"""The activation store on the real embedded model: provenance, mixing, BOS handling, resume, bad input."""
import datasets
import pytest
import torch

from kit.store import StoreConfig, TranscoderActivationsStore

OPTS = dict(ctx_len=64, batch_size=256, refill_contexts=48, shuffle_contexts=4096, holdout_contexts=4,
            domain_field="dom")


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
    lengths = torch.tensor([store.contexts[int(g) // 64].length for g in batch.global_ids])
    assert (batch.positions < lengths).all(), "a padding position came out"


def test_context_is_clipped_to_its_own_context(store, batch):
    gid = int(batch.global_ids[0])
    pos = gid % 64
    assert len(store.context(gid, before=3, after=2)) <= 6
    full = store.context(gid, before=10_000, after=10_000)
    assert full[0] == store.tokenizer.bos_token_id and len(full) == store.contexts[gid // 64].length
    assert full[pos] == int(batch.token_ids[0])
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
