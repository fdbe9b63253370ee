"""write_report on a synthetic run folder: sections, escaping, self-containment, optional inputs, fallbacks."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fake_run import ATTRIBUTION, make_interpretation, write_interpretation, write_run
from kit.collect.samples import select
from kit.interpret.interpretation import Interpretation
from kit.report.data import EVAL_CAPTION, fmt, load_run, top_samples_caption
from kit.report.write import write_report
from kit.report.html import svg_line
from kit.report.markdown import md
from kit.view.widgets import esc

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    folder = write_run(tmp_path_factory.mktemp("run"))
    interp = dataclasses.replace(make_interpretation(), caveat="Style <i>domains</i> may split by format.")
    md_path, html_path = write_report(folder, interp, n_cards=4)
    return md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")


def test_report_files_and_sections(full):
    text_md, html = full
    for title in ("Training", "Summary", "Top latents", "Domains", "Specialization", "Text patterns",
                  "Latent cards", "Attribution"):
        assert f"<h2>{title}</h2>" in html, f"section {title} missing from report.html"
    for title in ("Training", "Summary", "Top latents by maximum activation", "Domain specialization",
                  "Text patterns", "Latent cards", "Attribution"):
        assert f"\n## {title}\n" in text_md, f"section {title} missing from report.md"
    assert html.count('class="kit-card"') == 4 and text_md.count("\n### Latent ") == 4, "n_cards cards"
    assert re.findall(r"### Latent (\d+)", text_md) == ["5", "4", "3", "2"], "strongest latents first"
    assert "<polyline" in html and "lr over steps" in html, "the schedule is drawn"
    assert "latents with samples</td><td class=num>6<" in html and "| total top samples (final pass) | 24 |" in text_md
    assert "| held-out top samples | 24 |" in text_md, "the held-out phase is counted apart"
    assert f"Latent 2 — dose {ESCAPED}" in html and "logit lens, promoted" in html
    assert "top activations on held-out documents" in html and "- held-out, 2.4 (medicine)" in text_md
    for title in ("Against the nulls", "Most specialized latents", "Base rates", "Hierarchy", "Logit lens"):
        assert title in html and title in text_md, f"{title} missing"
    assert "<th>document_q</th>" in html and "<th>top_lift</th>" not in html, "the analysis names, not renamed"


def test_report_escapes_every_data_string(full):
    text_md, html = full
    for text in (text_md, html):
        assert "<script>alert" not in text and ESCAPED in text
        assert "<b>legal" not in text and "<i>domains" not in text and "<i>Wikipedia" not in text
    assert "fake&lt;run&gt;" in html and "fake&lt;run&gt;" in text_md
    assert "\\_" in text_md and "**⟦" in text_md, "markdown syntax escaped, collected token marked"


def test_report_html_is_self_contained(full):
    _, html = full
    lowered = html.lower()
    assert "<script" not in lowered and "<link" not in lowered and "src=" not in lowered and "@import" not in lowered
    assert "url(" not in lowered and "http://" not in lowered.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_attribution_is_shown(full):
    text_md, html = full
    assert 'Sources: &lt;i&gt;Wikipedia&lt;/i&gt; CC BY-SA 4.0 &amp; friends.' in html
    assert "Sources: &lt;i&gt;Wikipedia&lt;/i&gt; CC BY-SA 4.0 &amp; friends." in text_md


def test_report_without_optional_inputs(tmp_path):
    """No analysis, no latents.csv, no attribution metadata: stats come from the samples, the notice from the
    source column."""
    folder = write_run(tmp_path / "run")
    (folder / "latents.csv").unlink()
    table = pq.read_table(folder / "samples.parquet")
    pq.write_table(table.replace_schema_metadata({}), folder / "samples.parquet")
    md_path, html_path = write_report(folder)
    html = html_path.read_text()
    assert "<h2>Specialization</h2>" not in html and "<h2>Text patterns</h2>" not in html
    assert "Text from: testcorpus" in html and "Text from: testcorpus" in md_path.read_text()
    assert html.count('class="kit-card"') == 6
    run = load_run(folder)
    assert run.latents["max_activation"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_load_run_reads_windows_only_for_shown_latents(tmp_path):
    folder = write_run(tmp_path / "run")
    run = load_run(folder, n_cards=2, n_table=3)
    assert run.shown == [5, 4] and sorted(set(run.rows["latent"])) == [3, 4, 5]
    assert "context_tokens" not in run.light.columns and run.attribution == ATTRIBUTION


def test_helpers():
    assert md("a_b|c*<d>\n") == "a\\_b\\|c\\*&lt;d&gt;⏎"
    assert fmt(0.123456) == "0.123" and fmt(12345.6) == "12,346" and fmt([" a", "\n"]) == "' a', '\\n'"
    svg = svg_line([0, 1, 2], [1.0, 3.0, 2.0], "loss <x>")
    assert svg.count(",") == 3 and "loss &lt;x&gt;" in svg and "<script" not in svg
    assert svg_line([0], [1.0], "one point") == ""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    folder = write_interpretation(write_run(tmp_path_factory.mktemp("interpreted")))
    interp = Interpretation.load(folder)
    md_path, html_path = write_report(folder, interp, n_cards=4)
    return folder, interp, md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")


def test_domain_shares_sum_to_one_under_true_captions(interpreted):
    folder, interp, text_md, html = interpreted
    run = load_run(folder, n_cards=4, eval_profile=interp.profile)
    for prof in (run.profile, run.eval_profile):
        np.testing.assert_allclose(prof.groupby("latent")["share"].sum(), 1.0, atol=1e-6)
    # "top samples": the shares are recounted from the displayed phase's top samples
    top = select(pd.read_parquet(folder / "samples.parquet"), run.phase, "top")
    recount = (top.groupby(["latent", "domain"]).size() / top.groupby("latent").size()).sort_index()
    got = run.profile.set_index(["latent", "domain"])["share"].sort_index()
    np.testing.assert_allclose(got.to_numpy(), recount.to_numpy())
    assert got.index.equals(recount.index)
    # "held-out documents it fires in": the shares are its firing documents per domain over their total
    prof = run.eval_profile
    np.testing.assert_allclose(prof["share"], prof["documents"] / prof.groupby("latent")["documents"].transform("sum"))
    assert prof.loc[(prof["latent"] == 2) & (prof["domain"] == "medicine"), "share"].item() == 1.0
    caption = top_samples_caption(run)
    assert run.phase == "final" and "top samples (final pass)" in caption and "not a firing rate" in caption
    for text, escape in ((html, esc), (text_md, md)):
        assert escape(caption) in text and escape(EVAL_CAPTION) in text
        assert "Share of each latent's top samples per domain." not in text  # the old caption, over firing rates
    assert html.count("share of the held-out documents a latent fires in, per domain") == 4, "held-out bars"
    assert html.count("share of its 4 top samples (final pass), per domain") == 4, "top-sample bars say so"
    for line in re.findall(r"Domains of the held-out documents it fires in: (.*)", text_md):
        shown = [float(v) for v in re.findall(r"(\d+\.\d)%", line)]
        assert abs(sum(shown) - 100) <= 0.05 * len(shown) + 1e-9, line


def test_report_reads_the_interpretation_columns(interpreted):
    folder, interp, text_md, html = interpreted
    assert "Units are held-out documents" in text_md and "document\\_top\\_share" in text_md
    assert "Most specialized latents" in html and "<td>specialist</td>" in html
    with pytest.raises(ValueError, match="sum to 1"):
        load_run(folder, eval_profile=interp.profile.assign(share=interp.profile["rate"]))
    token = dataclasses.replace(interp, config=dataclasses.replace(interp.config, level="token"))
    md_path, _ = write_report(folder, token, n_cards=1)
    assert "Units are firing tokens" in md_path.read_text() and "token\\_q" in md_path.read_text()


def test_does_it_hold_up(full):
    text_md, html = full
    assert '<h2>Does it hold up?</h2>' in html and "\n## Does it hold up?\n" in text_md
    for text, escape in ((html, esc), (text_md, md)):
        for title in ("Margins over both nulls", "Specialists that beat token identity", "Replication on the topic set",
                      "Shares on the topic set", "Register"):
            assert escape(title) in text, title
        assert "1 of 2 specialists are topic specialists" in text, "survivors counted"
        for share in ("specialist_frac_alive", "topic_specialist_frac", "topic_specialist_frac_alive"):
            assert escape(share) in text, f"{share}: per latent and per alive latent"
        assert escape("medicine: short health-news headlines") in text and escape("code: Python source files") in text
        assert "medicine → health" in text and escape("second_specialists") in text
        assert "(politics 30, health 30, sport 30;" in text, "documents per topic"
    row = re.search(r"\| medicine \| short health-news headlines \| 1 \| 1 \| 1 \| health \| 1 \| 0\.167 \| 0\.167 \|",
                    text_md)
    assert row, "per domain: specialists, topic specialists, their share, the topic, replicated, expected, p"
    assert "<th>identity_lift</th><th>topic_specialist</th>" in html, "the specialization table says who survives"


def test_does_it_hold_up_without_replication(tmp_path):
    folder = write_run(tmp_path / "run")
    md_path, html_path = write_report(folder, make_interpretation(replicated=False), n_cards=1)
    for text in (md_path.read_text(), html_path.read_text()):
        assert "Not replicated: turned off." in text and "Shares on the topic set" not in text
        assert "Margins over both nulls" in text
