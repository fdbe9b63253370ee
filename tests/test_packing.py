"""Packing: several BOS-separated documents per context, exact per-token provenance, no compute on padding."""
import numpy as np
import pytest

from kit.corpus.records import iter_documents, open_source
from kit.corpus.packing import Packer, iter_contexts, padding_share
from kit.corpus.pile_like import pile_like_records


@pytest.fixture(scope="module")
def pile(embedded):
    return pile_like_records(n_docs=150, seed=1)


def test_packed_contexts_rebuild_every_document(pile, embedded):
    _, tok = embedded
    ctxs = list(iter_contexts(pile, tok, 256, domain_field="meta.pile_set_name", min_tokens=4, pack=True))
    rebuilt = {}
    for c in ctxs:
        assert c.token_ids[0] == tok.bos_token_id and len(c.token_ids) == 256
        assert (c.token_ids[c.length:] == c.token_ids[-1]).all() or c.length == 256
        mask = c.trained_mask()
        bos = np.flatnonzero(c.token_ids[:c.length] == tok.bos_token_id)
        assert list(bos) == [s.start - 1 for s in c.segments], "each document follows exactly one BOS"
        assert mask.sum() == c.length - len(bos) and not mask[bos].any()
        for s in c.segments:
            assert s.domain in {r["meta"]["pile_set_name"] for r in pile}
            rebuilt.setdefault(s.doc_id, []).append((s.doc_start, c.token_ids[s.start:s.stop].tolist()))
    docs = {d: (ids, dom) for ids, d, _, dom in iter_documents(pile, tok, domain_field="meta.pile_set_name")}
    for doc_id, pieces in rebuilt.items():
        ids = docs[doc_id][0]
        flat = [t for _, piece in sorted(pieces) for t in piece]
        assert flat == ids[:len(flat)], f"document {doc_id} is not rebuilt in order"
        assert [start for start, _ in sorted(pieces)] == list(np.cumsum([0] + [len(p) for _, p in sorted(pieces)])[:-1])
        assert len(flat) == len(ids), "packing drops no tokens of a document at least min_tokens long"


def test_packing_removes_padding_on_a_pile_like_set(pile, embedded):
    _, tok = embedded
    padded = list(iter_contexts(pile, tok, 1024, domain_field="meta.pile_set_name", pack=False))
    packed = list(iter_contexts(pile, tok, 1024, domain_field="meta.pile_set_name", pack=True))
    assert padding_share(padded) > 0.2, "one document per context wastes positions on this length mix"
    assert padding_share(packed) < 0.01, "only the last context may be padded"
    kept = [sum(c.trained_mask().sum() for c in ctxs) for ctxs in (packed, padded)]
    assert kept[0] >= kept[1], "packing cuts documents where it must, but never drops a tail it could keep"


def test_unpacked_contexts_hold_one_document(embedded):
    _, tok = embedded
    docs = [{"text": "The quick brown fox jumps over the lazy dog. " * 30}, {"text": "Insulin and glucose. " * 20}]
    for c in iter_contexts(docs, tok, 32, pack=False):
        assert len(c.segments) == 1 and c.segments[0].start == 1 and c.length == c.segments[0].stop


def test_a_piece_too_short_to_pack_starts_a_new_context(embedded):
    _, tok = embedded
    p = Packer(tok, ctx_len=16, min_tokens=4, pack=True)
    out = list(p.add(list(range(100, 112)), 0, 0, "a"))  # BOS + 12 tokens: 3 slots left, < BOS + 4
    out += list(p.add(list(range(200, 210)), 1, 0, "b")) + list(p.flush())
    assert [len(c.segments) for c in out] == [1, 1] and out[1].segments[0].doc_id == 1
    assert out[0].length == 13 and out[1].segments[0].doc_start == 0


def test_local_pile_like_jsonl_reads_nested_domains(tmp_path, embedded):
    from kit.corpus.pile_like import write_pile_like
    _, tok = embedded
    path = write_pile_like(tmp_path / "pile.jsonl", n_docs=20)
    ctxs = list(iter_contexts(open_source(str(path), domain_field="meta.pile_set_name"), tok, 128,
                              domain_field="meta.pile_set_name", pack=True))
    assert {s.domain for c in ctxs for s in c.segments} <= {"Github", "ArXiv", "PubMed Abstracts", "HackerNews",
                                                             "FreeLaw", "Pile-CC", "Books3", "EuroParl",
                                                             "Ubuntu IRC", "Wikipedia (en)"}
