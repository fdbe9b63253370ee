"""Text sources and context cutting."""
import json

import datasets
import pytest

from kit.corpus.records import open_source
from kit.corpus.packing import iter_contexts, real_mask, stack_tokens

DOCS = [{"text": "The quick brown fox jumps over the lazy dog. " * 30, "meta": {"kind": "fable"}},
        {"text": "Insulin regulates blood glucose in patients with diabetes. " * 20, "meta": {"kind": "medicine"}}]


def contexts_of(source, tok, **kw):
    return list(iter_contexts(open_source(source, **kw), tok, 32, text_field=kw.get("text_field", "text"),
                              domain_field=kw.get("domain_field")))


def test_context_invariants(embedded):
    _, tok = embedded
    ctxs = contexts_of(datasets.Dataset.from_list(DOCS), tok, domain_field="meta.kind")
    doc0 = tok(DOCS[0]["text"], add_special_tokens=False)["input_ids"]
    first = [c for c in ctxs if c.doc_id == 0]
    assert len(first) == -(-len(doc0) // 31) or len(first) == len(doc0) // 31  # last piece kept if >= min_tokens
    for c in ctxs:
        assert c.token_ids[0] == tok.bos_token_id and len(c.token_ids) == 32
        assert tok.bos_token_id not in c.token_ids[1:c.length].tolist()
    # Long documents are split, and positions continue across the pieces.
    rebuilt = [t for c in first for t in c.token_ids[1:c.length].tolist()]
    assert rebuilt == doc0[:len(rebuilt)] and [c.doc_start for c in first] == list(range(0, 31 * len(first), 31))
    assert {c.domain for c in ctxs} == {"fable", "medicine"}
    tokens, mask = stack_tokens(ctxs), real_mask(ctxs)
    assert tokens.shape == (len(ctxs), 32) and mask.sum() == sum(c.length for c in ctxs)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt"])
def test_local_files(tmp_path, embedded, kind):
    _, tok = embedded
    path = tmp_path / f"docs.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(d) for d in DOCS))
    elif kind == "parquet":
        datasets.Dataset.from_list([{"text": d["text"]} for d in DOCS]).to_parquet(str(path))
    else:
        path.write_text("\n".join(d["text"] for d in DOCS))
    ctxs = contexts_of(str(path), tok)
    assert len(ctxs) >= 2 and all(c.token_ids[0] == tok.bos_token_id for c in ctxs)


def test_folder_of_mixed_files_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(DOCS[0]))
    (tmp_path / "b.txt").write_text("text")
    with pytest.raises(ValueError, match="of one kind"):
        open_source(str(tmp_path))


def test_missing_field_lists_available_fields():
    with pytest.raises(ValueError, match=r"field 'content' is not in the source; available fields: \['meta', 'text'\]"):
        open_source(datasets.Dataset.from_list(DOCS), text_field="content")


def test_unsupported_source():
    with pytest.raises(ValueError, match="unsupported text source"):
        open_source(42)


def test_bos_inside_text_is_removed(embedded):
    _, tok = embedded
    text = f"before {tok.bos_token} after " * 20
    ctxs = list(iter_contexts([{"text": text}], tok, 16))
    assert all(tok.bos_token_id not in c.token_ids[1:c.length].tolist() for c in ctxs)
