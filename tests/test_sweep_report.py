"""The sweep page (sweep.md, sweep.html) on fake sweep folders, its frontier figures, `python -m kit report` on a
sweep folder, and the dead-fraction training curve of a run's report. No model loads here."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from fake_run import write_run
from kit.cli import main
from kit.io import write_json
from kit.presets import SMOKE
from kit.report.html import svg_line
from kit.report.sweep import load_sweep, write_sweep_report
from kit.report.write import write_report
from kit.sweep import sweep_points, sweep_table
from kit.view.figures import library_html
from kit.view.frontier import dead_vs_key, frontier_figures

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
REASON = f"loss is nan at step 3 {SCRIPT}"
BASE = dataclasses.replace(SMOKE, name="tiny & co", model=f"my{SCRIPT}model", source="notes <b>mine</b>")
K_GRID = {"latents.k": ["4", "8", "16", "32"]}


def fake_metrics(values: dict[str, str], i: int) -> dict:
    """Metrics that move with k (and lr), so every point's values differ."""
    k = float(values.get("latents.k", 8))
    lr = float(values.get("train.lr", 1e-3))
    return {"fvu": round(0.8 / (1 + k) + lr * 10 + i * 1e-4, 6), "explained_variance": 0.9, "l0": k * 0.95,
            "dead_frac": round(0.01 * k + i * 1e-3, 6), "dead_frac_eval": 0.02, "ce_loss_recovered": 1 - 1 / (2 + k),
            "kl": 0.1, "delta_ce": 0.2, "topk_retention": 0.5, "tokens_seen": 1000, "train_seconds": 120.5,
            "step_seconds": 3.0 * k, "collector": {"total_samples": 12}}


def write_sweep(folder: Path, grid: dict, stopped: tuple[str, ...] = (), unfinished: tuple[str, ...] = (),
                no_report: tuple[str, ...] = ()) -> Path:
    """A sweep folder as `run_sweep` leaves it (sweep.json, one folder per point with metrics.json, report.html
    or stopped.json), and sweep.csv written by the real `sweep_table`."""
    points = sweep_points(BASE, grid, folder)
    folder.mkdir(parents=True)
    write_json(folder / "sweep.json", {"grid": grid, "base": BASE.to_dict(), "points": [p.name for p in points]})
    for i, p in enumerate(points):
        p.out.mkdir(parents=True)
        if p.name in stopped:
            write_json(p.out / "stopped.json", {"reason": REASON})
        elif p.name not in unfinished:
            write_json(p.out / "metrics.json", fake_metrics(p.values, i))
            if p.name not in no_report:
                (p.out / "report.html").write_text(f"<html>report of {p.name}</html>")
    sweep_table(folder)
    return folder


@pytest.fixture
def k_sweep(tmp_path):
    return write_sweep(tmp_path / "k-sweep", K_GRID, stopped=("latents.k=32",), no_report=("latents.k=16",))


def traces(html: str) -> dict[str, list[dict]]:
    """The traces of every figure embedded in a page, by the id of its div."""
    out, decoder = {}, json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', html):
        out[m.group(1)], _ = decoder.raw_decode(html, m.end())
    return out


def test_page_links_every_point_relatively(k_sweep, tmp_path):
    md_path, html_path = write_sweep_report(k_sweep)
    assert (md_path, html_path) == (k_sweep / "sweep.md", k_sweep / "sweep.html")
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(str(k_sweep), moved)  # relative links survive a move
    html, text_md = (moved / "sweep.html").read_text(), (moved / "sweep.md").read_text()
    for point, target in (("latents.k=4", "latents.k=4/report.html"), ("latents.k=8", "latents.k=8/report.html"),
                          ("latents.k=16", "latents.k=16/"), ("latents.k=32", "latents.k=32/")):
        assert f'<a href="{target}">{point}</a>' in html, point
        assert f"[{point}]({target})" in text_md.replace("\\_", "_"), point
    page = html.replace(library_html(), "")  # plotly.js itself names plotly.com
    hrefs = re.findall(r'href="([^"#]+)"', page) + re.findall(r"\]\(([^)]+)\)", text_md)
    assert len(hrefs) >= 8
    for href in hrefs:
        assert not href.startswith(("/", "file:", "http")) and (moved / unquote(href)).exists(), href
    assert "report of latents.k=8" in (moved / "latents.k=8/report.html").read_text()


def test_page_lists_stopped_points_with_their_reason_and_escapes_file_text(k_sweep):
    _, html_path = write_sweep_report(k_sweep)
    html, text_md = html_path.read_text(), (k_sweep / "sweep.md").read_text()
    assert f'<li><a href="latents.k=32/">latents.k=32</a>: stopped: loss is nan at step 3 {ESCAPED}</li>' in html
    assert f"stopped: loss is nan at step 3 {ESCAPED}" in text_md and "## Not drawn" in text_md
    for text in (html, text_md):
        assert SCRIPT not in text and "<b>mine" not in text
    assert f"Sweep: tiny &amp; co: my{ESCAPED}model, layer 8, on notes &lt;b&gt;mine&lt;/b&gt;" in html
    assert "latents.k = 4, 8, 16, 32" in html and "4 points (3 finished, 1 stopped)" in html


def test_figures_are_embedded_offline_and_draw_the_table(k_sweep):
    _, html_path = write_sweep_report(k_sweep)
    html = html_path.read_text()
    assert html.count(library_html()) == 1, "plotly.js inline, once"
    lowered = html.lower()
    assert "<script src" not in lowered and "<link" not in lowered
    figs = traces(html)
    assert sorted(figs) == ["frontier-ce_loss_recovered", "frontier-dead_frac", "frontier-fvu"]
    assert html.replace(library_html(), "").count("plotly_click") == 3 and "window.location.href = p.customdata" in html
    table = pd.read_csv(k_sweep / "sweep.csv")
    done = table[table["status"] == "finished"].sort_values("latents.k")
    for name, x, y in (("fvu", "l0", "fvu"), ("ce_loss_recovered", "l0", "ce_loss_recovered"),
                       ("dead_frac", "latents.k", "dead_frac")):
        (trace,) = figs[f"frontier-{name}"]
        assert trace["x"] == pytest.approx(done[x].astype(float).tolist()), name
        assert trace["y"] == pytest.approx(done[y].astype(float).tolist()), name
        assert trace["customdata"] == ["latents.k=4/report.html", "latents.k=8/report.html", "latents.k=16/"]
        assert "latents.k=8</b>" in trace["hovertext"][1] and f"fvu {done['fvu'].iloc[1]:.4g}" in \
            trace["hovertext"][1]
    assert 32 not in figs["frontier-dead_frac"][0]["x"], "a stopped point is not drawn"


def test_a_grid_gets_one_trace_per_value_of_the_other_key(tmp_path):
    grid = {"latents.k": ["4", "8", "16"], "train.lr": ["1e-3", "3e-3"]}
    folder = write_sweep(tmp_path / "grid", grid, stopped=("latents.k=8,train.lr=3e-3",))
    sweep = load_sweep(folder)
    figs = frontier_figures(sweep.table, sweep.keys)
    fvu = figs["fvu"].data
    assert [t.name for t in fvu] == ["train.lr=1e-3", "train.lr=3e-3"]
    rows = sweep.table.set_index("point")
    for trace, lr, ks in ((fvu[0], "1e-3", ("4", "8", "16")), (fvu[1], "3e-3", ("4", "16"))):
        names = [f"latents.k={k},train.lr={lr}" for k in ks]
        assert list(trace.x) == rows.loc[names, "l0"].tolist() and list(trace.y) == rows.loc[names, "fvu"].tolist()
        assert list(trace.customdata) == [f"{name}/report.html" for name in names]
    assert list(figs["dead_frac"].data[1].x) == [4.0, 16.0]
    subtitle = figs["fvu"].layout.title.subtitle.text
    assert "not drawn: latents.k=8,train.lr=3e-3 (stopped: loss is nan" in subtitle and ESCAPED in subtitle
    assert sweep.table["train.lr"].tolist()[:2] == ["1e-3", "3e-3"], "swept values stay as written"


def test_a_non_numeric_key_gets_a_categorical_axis_and_missing_metrics_are_left_out(tmp_path):
    folder = write_sweep(tmp_path / "levels", {"analysis.level": ["token", "document"]})
    metrics = json.loads((folder / "analysis.level=document/metrics.json").read_text())
    write_json(folder / "analysis.level=document/metrics.json", {**metrics, "ce_loss_recovered": float("nan")})
    sweep_table(folder)
    sweep = load_sweep(folder)
    fig = dead_vs_key(sweep.table, sweep.keys)
    assert fig.layout.xaxis.type == "category" and list(fig.data[0].x) == ["token", "document"]
    figs = frontier_figures(sweep.table)
    assert len(figs["fvu"].data[0].x) == 2 and len(figs["ce_loss_recovered"].data[0].x) == 1
    assert np.isnan(sweep.table.set_index("point").loc["analysis.level=document", "ce_loss_recovered"])


def test_figures_escape_every_string_from_the_table():
    """Plotly draws tags in names, ticks and hover text: a table straight from `run_sweep` (values as text) with
    markup in its points, values and reasons shows it as text."""
    table = pd.DataFrame({"point": ["x=<b>a</b>", "x=<i>b</i>", "x=c"], "status": ["finished", "finished",
                          f"stopped: {SCRIPT}"], "x": ["<b>a</b>", "<i>b</i>", "c"], "run_dir": ["a", "b", "c"],
                          "report": ["a/report.html", "", ""], "l0": [2.0, 4.0, None], "fvu": [0.5, 0.4, None],
                          "ce_loss_recovered": [0.7, 0.8, None], "dead_frac": [0.1, 0.2, None]})
    figs = frontier_figures(table)
    dead = figs["dead_frac"]
    assert dead.layout.xaxis.type == "category" and list(dead.data[0].x) == ["&lt;b&gt;a&lt;/b&gt;",
                                                                               "&lt;i&gt;b&lt;/i&gt;"]
    assert list(dead.data[0].customdata) == ["a/report.html", "b/"]
    for fig in figs.values():
        text = json.dumps(fig.to_plotly_json(), default=str)
        assert "<b>a" not in text and "<i>b" not in text and "<script>" not in text
        assert "&lt;b&gt;a&lt;/b&gt;" in fig.data[0].hovertext[0] and ESCAPED in fig.layout.title.subtitle.text
    assert list(figs["fvu"].data[0].text) == ["x=&lt;b&gt;a&lt;/b&gt;", "x=&lt;i&gt;b&lt;/i&gt;"]


def test_cli_report_on_a_sweep_refreshes_the_table_and_writes_the_page(k_sweep, capsys):
    metrics = json.loads((k_sweep / "latents.k=4/metrics.json").read_text())
    write_json(k_sweep / "latents.k=4/metrics.json", {**metrics, "fvu": 0.123456})  # sweep.csv is now stale
    main(["report", str(k_sweep)])
    assert capsys.readouterr().out.strip() == f"wrote {k_sweep / 'sweep.md'} and {k_sweep / 'sweep.html'}"
    assert pd.read_csv(k_sweep / "sweep.csv").set_index("point").loc["latents.k=4", "fvu"] == 0.123456
    (trace,) = traces((k_sweep / "sweep.html").read_text())["frontier-fvu"]
    assert trace["y"][0] == 0.123456 and "| 0.123 |" in (k_sweep / "sweep.md").read_text()


def test_cli_report_on_a_folder_that_is_neither_says_so_in_one_line(tmp_path):
    (tmp_path / "stray").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path / "stray")])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "run folder" in message and "config.json" in message and "sweep folder" in message and \
        "sweep.json" in message


@pytest.mark.browser
def test_page_draws_in_a_browser_and_a_click_opens_the_report(k_sweep, tmp_path):
    """Offline in headless Chromium: the three figures draw every finished point, and the click handler of a
    figure, sent a click on the k=8 marker, opens that point's report.html."""
    from test_browser import CHROMIUM, chromium
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing under CI: `.ci/run` must `apt-get install -y chromium`")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); this test needs a real browser")
    _, html_path = write_sweep_report(k_sweep)
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri()).stdout
    assert dom.count('class="point plotly-customdata"') == 3 * 3, "3 figures x 3 finished points, with links"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>alert(1)" not in dom
    probe = k_sweep / "probe.html"  # the page, plus a click on the FVU figure's k=8 marker once it has drawn
    click = ("<script>window.addEventListener('load', function () { setTimeout(function () {"
             "var gd = document.getElementById('frontier-fvu'); gd.emit('plotly_click', {points: "
             "[{customdata: gd.data[0].customdata[1]}]}); }, 300); });</script></body>")
    probe.write_text(html_path.read_text().replace("</body>", click))
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    assert "report of latents.k=8" in dom, "the click did not open the point's report"


def test_run_report_draws_the_dead_fraction_over_training(tmp_path):
    folder = write_run(tmp_path / "run")
    history = pd.read_csv(folder / "history.csv")
    history["dead_frac"] = np.linspace(0.6, 0.05, len(history))
    history.to_csv(folder / "history.csv", index=False)
    md_path, html_path = write_report(folder, n_cards=1)
    html = html_path.read_text()
    curve = svg_line(history["step"], history["dead_frac"], "dead_frac over steps")
    assert curve and curve in html, "report.html lacks the dead-fraction curve"
    assert ">0.6<" in curve and ">0.05<" in curve, "the curve's axis spans the history's dead fractions"
    head = next(line for line in md_path.read_text().splitlines() if line.startswith("| step |"))
    assert "dead\\_frac" in head, "report.md's training-curve table lacks dead_frac"
