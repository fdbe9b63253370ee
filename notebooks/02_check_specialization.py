# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Do latents specialize by domain?
# For every latent we count the labelled held-out documents it fires in (not only its top-k), test where they fall
# against the domains' base rates, and compare with two nulls: shuffled domain labels and a random transcoder.
# Then we ask whether the specialists hold up: do they beat the words they fire on (the token-identity null), and
# do they specialize in the same subject on news articles of one register (the topic set)? Last come text patterns,
# the logit lens and labels, and the interpretability report.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("KIT_PRESET", "smoke")

# %%
import pandas as pd
import plotly.express as px
import torch

from kit import load_model
from kit.interpret.analysis import holds_up_by_domain, register_caveat
from kit.interpret.interpretation import ensure_interpretation
from kit.presets import get_preset, run_dir
from kit.report.write import write_report
from kit.run import ensure_run
from kit.view import domain_heatmap, setup_plotly

setup_plotly()
config = get_preset(PRESET)
out = run_dir(config.name)

# %% [markdown]
# ## 1. The run
# This loads the run notebook 01 saved, or trains it now if there is none.

# %%
model, tok = load_model(config.model, dtype=getattr(torch, config.model_dtype),
                        device="cuda" if torch.cuda.is_available() else "cpu")
metrics = ensure_run(config, out, model=model, tokenizer=tok)
print(f"FVU {metrics['fvu']:.3f}, L0 {metrics['l0']:.1f}, CE loss recovered {metrics['ce_loss_recovered']:.1%}")

# %% [markdown]
# ## 2. Specialization with both nulls
# The units are the held-out documents, each with a domain label. Thresholds are the run's `analysis` section
# (`SpecializationConfig`): a latent is a specialist when its document-level G-test survives Benjamini–Hochberg at
# q < 0.01, its top domain holds at least half the documents it fires in and at least twice that domain's base rate.
# Training saved this interpretation in the run folder; `ensure_interpretation` loads it (or computes it now, on
# the held-out documents, with the model already loaded).

# %%
interp = ensure_interpretation(out, model=model, tokenizer=tok, config=config.analysis)
summary = interp.summary
print(f"{interp.eval_documents:,} held-out documents ({interp.eval_tokens:,} scored tokens)")
# every share of all latents (_frac) beside the same share of alive latents (_frac_alive)
shares = ["specialist_frac", "specialist_frac_alive", "topic_specialist_frac", "topic_specialist_frac_alive"]
summary[["alive", "dead_frac", *shares, "median_top_lift_testable"]].round(3)

# %% [markdown]
# Specialists per domain, for the trained transcoder and the two nulls (same data, same thresholds):

# %%
per_domain = summary[[c for c in summary.columns if c.startswith("specialists_")]].T
per_domain.index = [c.removeprefix("specialists_") for c in per_domain.index]
per_domain.astype(int)

# %% [markdown]
# ## 3. The latent × domain heatmap
# For the specialists with the highest lift (rows): the share of the held-out documents each fires in that come
# from each domain (a row sums to 100%), so the diagonal structure is visible.

# %%
table = interp.specialization
lift = interp.column("lift")
specialists = table[table["category"] == "specialist"].sort_values(lift, ascending=False)
shown = specialists.latent.head(30).tolist() or table.sort_values(lift, ascending=False).latent.head(30).tolist()
domain_heatmap(interp.profile, shown)

# %% [markdown]
# ## 4. Do specialists fire more strongly?
# Mean activation when firing, specialists against generalists: effect sizes and a Mann–Whitney test.

# %%
print(interp.hierarchy_sentence)
pd.Series(interp.hierarchy).to_frame("value")

# %%
px.box(table[table["category"].isin(["specialist", "generalist"])], x="category", y="mean_act", points=False,
       title="Mean activation when firing, by category")

# %% [markdown]
# ## 5. Does it hold up?
# The embedded corpus's domains differ in *register* as well as in subject: licence text, health and finance
# headlines, lowercase chat, Shakespeare, speeches, source files. Three checks:
#
# - **Margins over both nulls**, as shares of all latents and of alive latents.
# - **Token identity.** Each specialist's firing documents are compared with what the token types it fires on
#   predict, were each type equally likely to fire in every domain (a G-test, Benjamini–Hochberg over the
#   specialists). Those whose top domain holds significantly more are *topic specialists*; the others may follow
#   a word that occurs mostly in one domain.
# - **Replication.** The same latents on the topic set (news articles in one register, never trained on): are the
#   run's specialists for politics and medicine specialists for the politics and health topics there, more often
#   than chance (hypergeometric)?

# %%
pd.concat([summary, interp.margins])[shares].T.round(3)

# %%
survival = holds_up_by_domain(table, interp.base_rates["domain"], interp.replication)
n_spec, n_topic = int((table["category"] == "specialist").sum()), int(table["topic_specialist"].sum())
print(f"{n_topic} of {n_spec} specialists beat the token-identity null")
survival

# %%
print(interp.replication_info)
interp.replication

# %%
interp.replication_summary[[c for c in shares if c in interp.replication_summary]].round(3)

# %%
print(register_caveat(interp.base_rates["domain"]))
print(interp.caveat)

# %% [markdown]
# ## 6. Text patterns, logit lens and labels
# Top activation-weighted words per latent, the tokens each decoder direction promotes directly, and the
# automatic label made from both (no LLM).

# %%
lens = interp.lens_lists().set_index("latent")
cards = table.set_index("latent").loc[lens.index[:12], ["category", "top_domain", "label"]]
cards["promotes"] = [", ".join(map(repr, p[:5])) for p in lens.promoted[:12]]
print(interp.logit_lens_caveat)
cards

# %%
interp.length_stats

# %% [markdown]
# ## 7. The report
# `report.md` and a self-contained `report.html` (no scripts, no network) go into the run folder.

# %%
md_path, html_path = write_report(out, interp)
print(md_path, html_path, f"{html_path.stat().st_size / 1e3:.0f} kB")

# %% [markdown]
# ## Checks

# %%
trained, shuffled = summary.loc["trained"], summary.loc["shuffled"]
assert trained.specialist_frac >= shuffled.specialist_frac, "shuffled labels produced more specialists than real ones"
assert shuffled.specialist_frac <= 0.01, f"the shuffled null flags {shuffled.specialist_frac:.1%} of latents"
assert set(table["category"]) <= {"specialist", "generalist", "dead", "dense"}, "unknown latent category"
assert not (table["topic_specialist"] & (table["category"] != "specialist")).any(), "a topic specialist is a specialist"
assert survival["topic_specialists"].sum() == n_topic <= n_spec, "survivors per domain add up"
assert trained.topic_specialist_frac >= shuffled.topic_specialist_frac, "shuffled labels beat token identity more often"
assert len(interp.replication_summary) or "skipped" in interp.replication_info, "the replication ran or says why not"
replicated = interp.replication
assert replicated["p"].between(0, 1).all() and (replicated["overlap"] <= replicated["drawn"]).all(), "replication"
assert html_path.exists() and "<script" not in html_path.read_text(), "report.html missing or not script-free"
