# %% [markdown]
# # 04 · Sweep k: the sparsity–fidelity frontier
# How many latents should fire per token? A TopK transcoder fixes it with `k`: a small k gives sparse, readable
# codes that reconstruct the MLP worse; a large k reconstructs better with more, and less specific, latents per
# token. `kit.sweep.run_sweep` trains one transcoder per k from **one** pass of the language model (every point gets
# the same batches, so the points differ only in k), writes a complete run folder per point, `sweep.json` and
# `sweep.csv`. We read the table, draw the frontier, write the sweep page and pick k.
# The command line does the same: `python -m kit train --preset cpu --sweep latents.k=16,32,64,128 --out runs/k-sweep`
# (see docs/sweeps.md).

# %% tags=["parameters"]
import os

PRESET = os.environ.get("KIT_PRESET", "smoke")
SMALL = PRESET == "smoke"  # a sweep small enough for a notebook test on 2 CPU cores (a few minutes)

# %%
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
from IPython.display import HTML, display
from tqdm.auto import tqdm

from kit.presets import get_preset, run_dir
from kit.report.html import html_table
from kit.report.sweep import frontier_frame, load_sweep, write_sweep_report
from kit.report.write import write_report
from kit.sweep import run_sweep, sweep_table
from kit.view import setup_plotly, show
from kit.view.frontier import frontier_figures, not_drawn, report_link
from kit.view.widgets import esc

setup_plotly()  # figures embed plotly.js, so they still show in a static HTML export
base = get_preset(PRESET)
if SMALL:  # smoke shrunk: narrower transcoders, fewer steps and contexts, a dead_window short enough to count
    base = base.override(["latents.d_latent=512", "train.steps=32", "train.lr=1e-2", "train.dead_window=4096",
                          "train.checkpoint_every=16", "train.log_every=4", "store.batch_size=256",
                          "store.refill_contexts=16", "store.shuffle_contexts=64", "store.holdout_contexts=32",
                          "eval_contexts=8", "collector.k=4"])
    K_VALUES = [2, 4, 8, 16]
else:
    K_VALUES = [base.latents.k // 4, base.latents.k // 2, base.latents.k, base.latents.k * 2]
GRID = {"latents.k": [str(k) for k in K_VALUES]}
out = run_dir(base.name).parent / f"{base.name}-k-sweep"  # beside the run of notebook 01
print(f"{len(K_VALUES)} transcoders of {base.latents.d_latent:,} latents, k in {K_VALUES}, {base.train.steps:,} "
      f"steps of {base.store.batch_size:,} tokens, on {base.model} layer {base.layer} -> {out}")

# %% [markdown]
# ## 1. Train the sweep
# One store feeds every trainer the same batch at every step; each point has its own optimizer, schedule, collector,
# history and checkpoints. The final pass reads each context once with the language model and scores it with every
# transcoder. A point whose loss goes non-finite stops alone (its folder gets `stopped.json`) and the others go on.
# Rerunning this cell reuses a finished sweep (`run_sweep` returns at once, without loading the model) and resumes
# a killed one from the newest checkpoint every point has. In the small sweep each point's report covers training
# and samples; `python -m kit report <point folder>` adds the domain interpretation (it needs the model).

# %%
table = run_sweep(base, GRID, out, resume=(out / "sweep.json").exists(), report=not SMALL)
for point in tqdm([p for p in table.itertuples() if p.status == "finished" and not p.report], desc="reports"):
    write_report(out / point.run_dir)
table = sweep_table(out)  # rebuilt from the folders: the report column now names every report.html
table[["point", "status", "l0", "fvu", "ce_loss_recovered", "dead_frac"]]

# %% [markdown]
# ## 2. The frontier table
# One row per point: L0 (latents active per token, at most k), FVU (share of the MLP output's variance the
# transcoder leaves unexplained), CE loss recovered (how much of the loss increase from zero-ablating the MLP the
# spliced transcoder wins back), the dead fraction (latents that did not fire in the last `dead_window` training
# tokens), the point's own step time and the whole sweep loop's wall time (shared). Each point links to its report.

# %%
sweep = load_sweep(out)  # sweep.json and sweep.csv, the swept values as written
here = quote(Path(os.path.relpath(out, Path.cwd())).as_posix())  # links from this notebook's folder
shown = frontier_frame(sweep)
shown["point"] = [f'<a href="{esc(here + "/" + report_link(row))}" target="_blank">{esc(row["point"])}</a>'
                  for _, row in sweep.table.iterrows()]
display(HTML(html_table(shown, len(shown), raw=("point",))))
rest = not_drawn(sweep.table)
print("every point finished" if rest.empty else f"not drawn (not finished):\n{rest[['point', 'state', 'reason']]}")

# %% [markdown]
# ## 3. The frontier
# FVU and CE loss recovered against L0 (hover a marker for all its metrics), and the dead fraction against k.
# Only finished points are drawn; a stopped one would be named under each title with its reason.

# %%
figures = frontier_figures(sweep.table, sweep.keys)
for fig in figures.values():
    show(fig)

# %% [markdown]
# ## 4. The sweep page
# `write_sweep_report` writes `sweep.md` and `sweep.html` at the top of the sweep folder: the same table (each row
# linking to its point's report), the three figures (plotly.js inline, so the page works offline; clicking a marker
# opens that point's report) and the points that did not finish. Links are relative: the folder can be moved.
# `python -m kit report runs/<sweep>` rebuilds `sweep.csv` and the page from the points' folders.

# %%
md_path, html_path = write_sweep_report(out)
print(f"wrote {md_path} and {html_path} ({html_path.stat().st_size / 1e6:.1f} MB)")
display(HTML(f'<a href="{esc(here)}/sweep.html" target="_blank">open sweep.html</a>'))

# %% [markdown]
# ## 5. Reading the frontier: picking k
# - **FVU against L0** slopes down: more active latents reconstruct more. What matters is where it flattens. Below
#   is the gain of each doubling of k: while a doubling still cuts FVU a lot, sparsity is costing fidelity; once
#   the gains are small, a larger k buys little reconstruction for more latents per token to read.
# - **CE loss recovered** is the downstream check: FVU counts every direction of the MLP output alike, the
#   language model's loss counts the ones it uses. A k that reconstructs well but recovers little CE loss spends
#   its latents on directions the model ignores.
# - **Dead fraction**: a small k gives each token few latents, so many latents never win a slot and die; width
#   spent on dead latents is wasted (TopK's auxiliary loss revives some). Compare it with the same window length.
# - If L0 stays well below k, many tokens fire fewer than k latents (some of the top k are not positive): k is
#   not binding, and raising it changes little.
#
# A reasonable pick is the smallest k past which doubling no longer cuts FVU much and CE loss recovered has
# levelled off, with a dead fraction you can accept. The small CPU sweep trains for a few dozen steps, so its
# numbers show the method, not Gemma's answer: run the `cpu` preset or a GPU preset for real ones.

# %%
done = sweep.table[sweep.table.status == "finished"].assign(k=lambda t: t["latents.k"].astype(int)).sort_values("k")
doubling = pd.DataFrame({"from k": done["k"].to_numpy()[:-1], "to k": done["k"].to_numpy()[1:],
                         "FVU cut": -done["fvu"].diff().to_numpy()[1:],
                         "FVU cut, relative": (-done["fvu"].diff() / done["fvu"].shift()).to_numpy()[1:],
                         "CE loss recovered gain": done["ce_loss_recovered"].diff().to_numpy()[1:],
                         "L0 added": done["l0"].diff().to_numpy()[1:]})
doubling.round(4)

# %% [markdown]
# ## Checks

# %%
assert list(table["point"]) == [f"latents.k={k}" for k in K_VALUES], "sweep.csv lacks points or their order"
assert (table["status"] == "finished").all(), f"unfinished points: {table[table.status != 'finished']}"
assert (done["l0"] <= done["k"] + 1e-6).all(), "a TopK point fires more than k latents per token"
assert done["fvu"].iloc[-1] < done["fvu"].iloc[0], "the largest k does not reconstruct better than the smallest"
for name, x, y in (("fvu", "l0", "fvu"), ("ce_loss_recovered", "l0", "ce_loss_recovered"),
                   ("dead_frac", "k", "dead_frac")):
    trace = figures[name].data[0]
    assert list(trace.x) == done[x].astype(float).tolist() and list(trace.y) == done[y].tolist(), name
for link in [report_link(row) for _, row in sweep.table.iterrows()]:
    assert link.endswith("report.html") and (out / unquote(link)).exists(), f"{link} is missing"
assert "Plotly.newPlot" in html_path.read_text() and md_path.exists()
