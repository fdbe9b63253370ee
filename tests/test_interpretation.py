"""The typed Interpretation: one set of names, an exact CSV/JSON round trip, and `ensure_interpretation` loading
without a model or rebuilding what is missing, stale or made with other thresholds. Also: kit/ reads samples
through `kit.collect.samples` only."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fake_run import SCRIPT, make_interpretation, write_interpretation, write_run
from kit.config import SpecializationConfig
from kit.interpret import interpretation as module
from kit.interpret.analysis import DocumentStats, latent_table
from kit.interpret.interpretation import FOLDER, Interpretation, ensure_interpretation

KIT = Path(__file__).resolve().parents[1] / "kit"


def assert_same(a: Interpretation, b: Interpretation) -> None:
    for field in dataclasses.fields(Interpretation):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y, check_exact=True, obj=field.name)
        elif isinstance(x, dict):
            pd.testing.assert_series_equal(pd.Series(x, dtype=object), pd.Series(y, dtype=object), obj=field.name)
        else:
            assert x == y and type(x) is type(y), field.name


def test_round_trip_changes_nothing(tmp_path):
    original = make_interpretation()
    folder = original.save(tmp_path)
    assert folder == tmp_path / FOLDER
    assert {p.suffix for p in folder.iterdir()} == {".csv", ".json"}, "CSV and JSON only, no pickle"
    back = Interpretation.load(tmp_path)
    assert_same(original, back)
    assert back.logit_lens["promoted"].tolist() == [" dose", "\r", "NULL"], "tokens a CSV could mangle survive"
    assert back.top_words["text"].tolist()[2] == "nan" and back.specialization.loc[6, "top_domain"] == ""
    assert list(back.summary.index) == ["trained", "shuffled"] and back.summary.index.name == "transcoder"
    assert_same(back, Interpretation.load(Interpretation.load(tmp_path).save(tmp_path / "again").parent))
    assert back.specialization["topic_specialist"].dtype == bool and back.replication_info["mapping"] == {
        "medicine": "health", "code": "politics"}
    assert list(back.replication_summary.index) == ["trained", "shuffled", "trained - shuffled"]


def test_round_trip_without_replication(tmp_path):
    original = make_interpretation(replicated=False)
    assert original.replication.empty and original.replication_summary.empty
    assert original.replication_info == {"skipped": "turned off"}
    back = Interpretation.load(original.save(tmp_path).parent)
    assert_same(original, back)
    assert list(back.replication.columns)[:4] == ["domain", "topic", "run_specialists", "overlap"]


def test_one_set_of_names_from_the_analysis(tmp_path):
    interp = make_interpretation()
    table = interp.specialization
    tiny = DocumentStats.from_token_acts(np.ones((4, 2)), [0, 0, 1, 1], [0, 0, 1, 1], ["a", "b"])
    assert list(table.columns) == list(latent_table(tiny).columns) + ["label"], "latent_table's names, and label"
    assert {"category", "top_domain", "document_top_share", "document_lift", "document_q", "mean_act",
            "n_documents", "label"} <= set(table.columns)
    assert not {"class", "top_share", "top_lift", "q_value"} & set(table.columns), "nothing renamed"
    assert list(interp.profile.columns) == ["latent", "domain", "documents", "share", "lift", "rate"]
    assert interp.column("lift") == "document_lift" and interp.config == SpecializationConfig()
    assert interp.labels[2] == f"dose {SCRIPT}" and interp.hierarchy["n_specialist"] == 2
    lists = interp.lens_lists()
    assert lists["latent"].tolist() == [2, 5] and lists.loc[0, "suppressed"] == ["\n", ""]
    assert interp.lens_of(2) == {"promoted": [" dose", "\r"], "suppressed": ["\n", ""]} and interp.lens_of(0) is None
    assert table.set_index("latent").loc[2, "category"] == "specialist"
    assert table["topic_specialist"].tolist() == [False, False, True] + [False] * 5, "7 is explained by its word"
    assert {"specialist_frac", "specialist_frac_alive", "generalist_frac_alive", "topic_specialist_frac",
            "topic_specialist_frac_alive", "topic_specialists_medicine"} <= set(interp.summary.columns)
    assert interp.replication.set_index("domain").loc["medicine", "overlap"] == 1
    assert list(interp.margins.index) == ["trained - shuffled"]


def test_ensure_loads_without_a_model(tmp_path, monkeypatch):
    folder = write_interpretation(write_run(tmp_path / "run"))

    def refuse(*args, **kwargs):
        raise AssertionError("a saved interpretation must load without the model")
    monkeypatch.setattr("kit.lm.models.load_model", refuse)
    monkeypatch.setattr(module, "interpret_run", refuse)
    monkeypatch.setattr(module, "run_store", refuse)
    assert_same(ensure_interpretation(folder), make_interpretation())
    faster = SpecializationConfig(batch_contexts=7)  # batch_contexts sets speed only: no reason to rebuild
    assert_same(ensure_interpretation(folder, config=faster), make_interpretation())


@pytest.fixture
def rebuilds(monkeypatch):
    """Calls of a stand-in `interpret_run`, with the store a stand-in `run_store` built (no model)."""
    calls = []
    monkeypatch.setattr(module, "run_store", lambda run_dir, model=None, tokenizer=None: ("store of", model))
    monkeypatch.setattr(module, "interpret_run", lambda run_dir, store, config=None: calls.append((store, config))
                        or "rebuilt")
    return calls


def test_ensure_rebuilds_missing_stale_and_other_thresholds(tmp_path, rebuilds):
    folder = write_run(tmp_path / "run")
    assert ensure_interpretation(folder, model="lm", tokenizer="tok") == "rebuilt", "never interpreted"
    assert rebuilds[-1] == (("store of", "lm"), SpecializationConfig())
    (folder / "specialization.json").write_text(json.dumps({"version": 2}))  # what the kit before this one wrote
    assert ensure_interpretation(folder) == "rebuilt" and rebuilds[-1][0] == ("store of", None)
    write_interpretation(folder)
    spec_path = folder / FOLDER / "interpretation.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps(spec | {"version": 2}))
    assert ensure_interpretation(folder, store="mine") == "rebuilt" and rebuilds[-1][0] == "mine", "older version"
    spec_path.write_text(json.dumps(spec))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"analysis": {"alpha": 0.05}}))
    assert ensure_interpretation(folder) == "rebuilt", "the run asks for other thresholds"
    assert rebuilds[-1][1] == SpecializationConfig(alpha=0.05) and len(rebuilds) == 4
    with pytest.raises(FileNotFoundError, match="ensure_interpretation"):
        Interpretation.load(tmp_path / "nowhere")


def test_samples_are_read_through_one_api():
    """No hand-written kind/phase filter or max/mean summary of samples outside kit/collect/samples.py."""
    patterns = [r"""kind\W{0,3}\s*==\s*["'](top|interval)["']""", r"""phase\W{0,3}\s*==\s*["']""",
                r"""["'](top|interval)["']\s*==""",
                r"""groupby\(["']latent["']\)(\[["']activation["']\]|\.activation)"""]
    found = [f"{path.relative_to(KIT)}:{n}: {line.strip()}" for path in sorted(KIT.rglob("*.py"))
             if path != KIT / "collect" / "samples.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if any(re.search(p, line) for p in patterns)]
    assert not found, "use kit.collect.samples.select / latent_summary:\n" + "\n".join(found)


TINY = ["latents.d_latent=256", "latents.k=8", "train.steps=6", "store.batch_size=256", "store.refill_contexts=8",
        "store.shuffle_contexts=64", "store.holdout_contexts=16", "eval_contexts=8", "collector.k=4"]


@pytest.mark.slow
def test_ensure_interpretation_of_a_real_run(tmp_path, embedded, monkeypatch):
    from kit.collect.samples import latent_summary, strongest
    from kit.presets import SMOKE
    from kit.report.write import write_report
    from kit.run import train_run
    model, tok = embedded
    train_run(SMOKE.override(TINY), tmp_path, progress=False, report=False, model=model, tokenizer=tok)
    built = ensure_interpretation(tmp_path, model=model, tokenizer=tok)
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    assert built.logit_lens["latent"].unique().tolist() == strongest(latent_summary(samples, "final"), 64)
    assert set(built.specialization["category"]) <= {"specialist", "generalist", "dead", "dense"}
    np.testing.assert_allclose(built.profile.groupby("latent")["share"].sum(), 1.0)
    table = built.specialization
    assert table["topic_specialist"].dtype == bool and not (table["topic_specialist"] & (table["category"] !=
                                                                                         "specialist")).any()
    assert built.replication_info["contexts"] == built.replication_info["documents"] == 256, "one context each"
    assert list(built.replication_summary.index) == ["trained", "shuffled", "random", "trained - shuffled",
                                                     "trained - random"]
    assert built.replication["domain"].tolist() == ["politics", "medicine"], "both mapped domains and topics present"
    monkeypatch.setattr("kit.lm.models.load_model", lambda *a, **k: pytest.fail("loaded the model again"))
    assert_same(built, ensure_interpretation(tmp_path))
    md_path, html_path = write_report(tmp_path, built)
    assert "Most specialized latents" in html_path.read_text() and "Logit lens" in md_path.read_text()
    assert "<h2>Does it hold up?</h2>" in html_path.read_text()
    assert "Replication on the topic set" in md_path.read_text()
