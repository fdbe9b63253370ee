"""Token highlights, latent cards, the explorer and its figures: escaping, a snapshot, invariants, driven widgets.

`KIT_UPDATE_SNAPSHOTS=1 pytest tests/test_widgets.py` rewrites tests/snapshots/ after a deliberate change.
"""
from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from fake_run import DOMAINS, SCRIPT, make_interpretation, make_samples
from kit import view
from kit.collect.samples import select
from kit.view import latent_explorer as explorer_module
from kit.view.widgets import (act_colour, as_profile, domain_profile, profile_caption, sample_card, token_highlight,
                              visible_token)


class DisplayHandle:
    """Stands in for IPython's: `update` records what the live notebook would show."""

    def __init__(self, shown: list):
        self.shown = shown

    def update(self, obj):
        self.shown.append(obj)


SNAPSHOTS = Path(__file__).parent / "snapshots"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
TOKENS = ["<bos>", " The", " cat", SCRIPT, "\n", "\t", " ", "", ' "q"', " &amp;"]
ACTS = [0.0, 0.5, 1.0, 4.0, 2.0, -1.0, 0.25, 3.0, float("nan"), 0.1]


class Spans(HTMLParser):
    """The text, title and class of every token span."""

    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "span" and "kit-t" in dict(attrs).get("class", ""):
            self._open = dict(attrs) | {"text": ""}

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def spans_of(html: str) -> list[dict]:
    parser = Spans()
    parser.feed(html)
    return parser.spans


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    return make_samples()


@pytest.fixture(scope="module")
def interp():
    return make_interpretation()


def check_escaped(html: str) -> None:
    assert "<script>alert" not in html, "text from data reached the page as markup"
    assert ESCAPED in html, "the escaped form of the <script> token is missing"


def test_highlight_escapes_and_shows_every_token_as_text():
    html = token_highlight(TOKENS, ACTS, highlight_index=3).html
    check_escaped(html)
    spans = spans_of(html)
    assert [s["text"] for s in spans] == [visible_token(t) for t in TOKENS], "parsed text = shown tokens"
    assert [s["text"] for s in spans][4:8] == ["⏎", "⇥", " ", "∅"]
    assert [s["title"] for s in spans][3] == "act 4 (collected token)"
    assert [s["class"] for s in spans].count("kit-t kit-hit") == 1 and "kit-hit" in spans[3]["class"]
    assert ' &quot;q&quot;' in html and "&amp;amp;" in html


def test_highlight_colour_scale():
    assert act_colour(0.0, 4.0) is None and act_colour(float("nan"), 4.0) is None and act_colour(1.0, 0) is None
    assert act_colour(4.0, 4.0) == act_colour(9.0, 4.0) == "#ff8c00"
    blues = [int(act_colour(a, 4.0)[5:7], 16) for a in (0.5, 1, 2, 4)]
    assert blues == sorted(blues, reverse=True), "more activation, more orange"
    spans = spans_of(token_highlight(TOKENS, ACTS).html)
    assert "style" not in spans[0] and "background:#ff8c00" in spans[3]["style"], "default scale: the largest |act|"
    half = spans_of(token_highlight(TOKENS, ACTS, max_act=8.0).html)
    assert half[3]["style"] == f"background:{act_colour(4.0, 8.0)}"


def test_highlight_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one activation per token"):
        token_highlight(["a", "b"], [1.0])


def test_highlight_snapshot():
    """The exact HTML is pinned: a change to it is a deliberate, reviewed change of the snapshot file."""
    html = token_highlight(TOKENS, ACTS, max_act=4.0, highlight_index=3)._repr_html_()
    assert html == token_highlight(TOKENS, ACTS, max_act=4.0, highlight_index=3).html, "deterministic"
    path = SNAPSHOTS / "token_highlight.html"
    if os.environ.get("KIT_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(html + "\n", encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with KIT_UPDATE_SNAPSHOTS=1 to write it"
    assert html + "\n" == path.read_text(encoding="utf-8"), \
        f"token_highlight output changed; if on purpose, rerun with KIT_UPDATE_SNAPSHOTS=1 and review {path}"


def test_card_sections_and_escaping(samples):
    rows = samples[samples.latent == 2]
    lens = {"promoted": [" dose", "<script>"], "suppressed": ["\n"]}
    html = sample_card(rows, label=f"label {SCRIPT}", logit_lens=lens, n_top=3, per_interval=1)
    check_escaped(html)
    assert "Latent 2 — label" in html and "max 3 · mean 2.55 · 4 top samples (final pass)" in html
    assert html.count('class="kit-tokens"') == 3 + 3 + 2, "3 top samples, one per interval bin, 2 held-out"
    bins = [int(b) for b in re.findall(r"interval bin (\d+)", html)]
    assert bins == [2, 1, 0], "highest bin first"
    assert "top activations on held-out documents" in html and "act 2.4 · medicine" in html
    assert "top-k retention 50%" in html, "2 of the 4 training top contexts (ranks 0, 2) are final top contexts"
    assert "logit lens, promoted" in html and "&lt;script&gt;</code>" in html and "⏎</code>" in html
    assert 'class="kit-profile"' in html and "100%" in html
    assert "share of its 4 top samples (final pass), per domain" in html, "the bars say what they count"
    held = sample_card(rows, phase="heldout", n_top=1)
    assert "4 top samples (heldout pass)" in held and "max 2.4" in held and "on held-out documents" not in held


def test_card_bars_name_the_profile_they_show(samples, interp):
    rows = samples[samples.latent == 2]
    html = sample_card(rows, profile=interp.profile)
    assert "share of the held-out documents a latent fires in, per domain" in html and "top samples), per" not in html
    assert "medicine</span>" in html and ">100%<" in html
    assert "domain shares" in sample_card(rows, profile={"code": 1.0})
    assert "share of 9 pages" in sample_card(rows, profile={"code": 1.0}, profile_title="share of 9 pages")
    assert profile_caption(domain_profile(samples)) == "share of a latent's top samples, per domain"
    assert profile_caption(interp.profile) == "share of the held-out documents a latent fires in, per domain"


def test_card_domain_filter_and_errors(samples):
    rows = samples[samples.latent == 3]
    html = sample_card(rows, domain="code", retention=0.5)
    assert "top activations in code" in html and "top-k retention 50%" in html
    assert "&lt;b&gt;legal&lt;/b&gt;" in html and "<b>legal" not in html, "domain names are escaped too"
    assert "act 4 · code" not in html and "act 3.6 · code" in html, "rank 0 (legal) is filtered out"
    with pytest.raises(ValueError, match="one latent"):
        sample_card(samples[samples.latent.isin([1, 2])])


def test_domain_profile_shares(samples):
    prof = domain_profile(samples)
    assert prof.groupby("latent")["share"].sum().round(12).eq(1).all()
    final_top = select(samples, "final", "top")
    assert (prof.groupby("latent")["count"].sum() == final_top.groupby("latent").size()).all()
    wide = prof.pivot_table(index="latent", columns="domain", values="count", fill_value=0)
    back = as_profile(wide)
    merged = back[back["count"] > 0].merge(prof, on=["latent", "domain"], suffixes=("", "_long"))
    assert len(merged) == len(prof) and (merged["share"] - merged["share_long"]).abs().max() < 1e-12


def test_explorer_controls_drive_the_html(samples):
    latents = pd.DataFrame({"latent": range(6), "document_lift": [1, 2, 6, 3, 4, 5.0],
                            "label": ["", "", f"label {SCRIPT}", "", "", ""]})
    ex = view.explorer(samples, latents=latents)
    assert ex.latent.value == 5 and [v for _, v in ex.latent.options] == [5, 4, 3, 2, 1, 0], "max first"
    assert list(ex.sort.options) == ["max", "mean", "specialization"]
    ex.sort.value = "specialization"
    assert ex.latent.value == 5 and [v for _, v in ex.latent.options][:2] == [2, 5], "lift first, choice kept"
    ex.latent.value = 2
    check_escaped(ex.render())
    assert "Latent 2 — label" in ex.render() and "sorted by specialization" in ex.render()
    ex.n.value = 2
    assert ex.render().count("act 3 · medicine") == 1 and ex.render().count('class="kit-tokens"') == 2 + 3 + 2
    ex.domain.value = "code"
    assert 2 not in [v for _, v in ex.latent.options] and ex.latent.value == 4, "latent 2 has no code sample"
    assert "domain code" in ex.render() and "top activations in code" in ex.render()
    assert ex.card.value == ex.render() and ex.render() in ex._repr_html_()
    ex.domain.value = DOMAINS[3]
    assert ex.latent.value == 3 and "&lt;b&gt;legal&lt;/b&gt;" in ex.render()


def test_explorer_reads_an_interpretation_and_switches_phase(samples, interp):
    ex = view.explorer(samples, interp)
    assert list(ex.sort.options) == ["max", "mean", "specialization", "q_value", "top_share"]
    ex.sort.value = "q_value"
    assert [v for _, v in ex.latent.options][0] == 2, "latent 2 is the medicine specialist, lowest document_q"
    ex.latent.value = 2
    html = ex.render()
    assert f"Latent 2 — dose {ESCAPED}" in html and "logit lens, promoted" in html
    assert "share of the held-out documents a latent fires in, per domain" in html
    ex.domain.value = "code"
    assert 2 not in [v for _, v in ex.latent.options], "the domain filter reads the held-out profile"
    assert list(ex.phase_control.options) == ["training", "final", "heldout"] and ex.phase == "final"
    ex.domain.value = "all"
    ex.sort.value = "max"
    ex.phase_control.value = "heldout"
    ex.latent.value = 5
    assert "heldout pass" in ex.render() and "max 4.8 · mean 4.08" in ex.render(), "heldout: 0.8 x the peak"
    assert ex.latents.loc[5, "max_activation"] == pytest.approx(4.8)


def test_explorer_display_and_figures(samples, monkeypatch):
    ex = view.explorer(samples)
    shown = []
    monkeypatch.setattr(explorer_module, "display", lambda obj, **kw: shown.append(obj) or DisplayHandle(shown))
    ex._ipython_display_()
    assert shown[0] is ex.widget and ex.render() in shown[1].data, "the widget, then its static copy"
    assert ex._repr_html_() == ex.static_html() and 'class="kit-static"' in ex.static_html()
    ex.latent.value = 1
    assert "Latent 1" in shown[-1].data, "the static copy follows the widget"
    hist, bar, heat = (ex.figures[k] for k in ("histogram", "profile", "heatmap"))
    assert [t.name for t in hist.data] == ["top", "interval"] and len(hist.data[0].x) == 4
    assert sorted(bar.data[0].x) == ["math_science", "medicine"] and list(bar.data[0].y) == [0.5, 0.5]
    assert heat.data[0].z.shape == (6, len(DOMAINS)) and list(heat.data[0].y)[0] == "latent 5"
    assert "&lt;b&gt;legal&lt;/b&gt;" in list(heat.data[0].x), "plotly would draw <b> as bold: labels escaped"
    assert "top samples" in bar.layout.title.text and "top samples" in heat.layout.title.text


def test_figure_titles_follow_the_profile(interp):
    bar, heat = view.domain_profile_bar(interp.profile, 2), view.domain_heatmap(interp.profile, [2, 0])
    for fig in (bar, heat):
        assert "held-out documents a latent fires in" in fig.layout.title.text
    assert view.domain_heatmap(interp.profile, [2], title="Mine").layout.title.text == "Mine"


def test_setup_plotly_draws_offline(samples):
    import plotly.io as pio
    from kit.view.figures import library_html
    name = view.setup_plotly()
    assert name == "plotly_mimetype+kit_inline" and pio.renderers.default == name
    bundle = pio.renderers["kit_inline"].to_mimebundle(view.domain_heatmap(domain_profile(samples), [1, 2])
                                                       .to_dict())
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html and "<script src" not in html and "https://" not in html, "no CDN"
    assert library_html().startswith('<script type="text/javascript">/**') and "cdn" not in library_html()[:300]
