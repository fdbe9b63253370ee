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
# # 03 · Explore the latents
# Pick a latent, sort by maximum or mean activation or by specialization, filter by domain, and read its
# highlighted samples (darker = stronger; hover a token for its value; the collected token is outlined).
# A static copy of each card stays in the notebook, so an HTML export still shows it.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("KIT_PRESET", "smoke")

# %%
import pandas as pd
from IPython.display import HTML

from kit.collect.samples import latent_summary, strongest
from kit.interpret.interpretation import ensure_interpretation
from kit.presets import get_preset, run_dir
from kit.run import ensure_run
from kit.view import (activation_histogram, domain_heatmap, domain_profile_bar, explorer, sample_card, setup_plotly,
                      token_highlight)

setup_plotly()
config = get_preset(PRESET)
out = run_dir(config.name)

# %% [markdown]
# ## 1. Load the run and its interpretation
# Notebooks 01 and 02 saved them; if they are missing this trains and interprets the run now.

# %%
metrics = ensure_run(config, out)
interp = ensure_interpretation(out)
samples = pd.read_parquet(out / "samples.parquet")
print(f"{samples.latent.nunique():,} latents with samples, {len(samples):,} sample rows, phases "
      f"{sorted(samples.phase.unique())}")

# %% [markdown]
# ## 2. The explorer
# Controls: latent, sort (max or mean activation, or specialization: lift, q, top share), domain filter (latents
# that fire in that domain's held-out documents), phase ('final': the final weights over the training tokens,
# 'training', 'heldout': held-out documents), number of samples.

# %%
ex = explorer(samples, interp)
ex

# %% [markdown]
# ## 3. One latent in detail
# The most specialized latent with samples: its card (with its strongest held-out samples), activation histogram
# and the share of the held-out documents it fires in per domain.

# %%
table = interp.specialization
ranked = table[table.latent.isin(samples.latent.unique())].sort_values(interp.column("lift"), ascending=False)
specialists = ranked[ranked["category"] == "specialist"]
latent = int((specialists if len(specialists) else ranked).latent.iloc[0])
HTML(sample_card(samples[samples.latent == latent], label=interp.labels.get(latent), profile=interp.profile,
                 logit_lens=interp.lens_of(latent)))

# %%
activation_histogram(samples, latent)

# %%
domain_profile_bar(interp.profile, latent)

# %% [markdown]
# ## 4. Latents × domains
# For the 25 strongest latents (largest activation among their final-pass top samples): the share of the held-out
# documents each fires in that come from each domain.

# %%
top25 = strongest(latent_summary(samples, "final"), 25)
domain_heatmap(interp.profile, top25)

# %% [markdown]
# ## Checks

# %%
ex.latent.value = latent
ex.n.value = 2
html = ex.render()
assert f"latent {latent}" in html.lower() or str(latent) in html, "the explorer does not show the chosen latent"
assert "held-out documents a latent fires in" in html, "the card's bars say what they are shares of"
assert "<script>alert" not in token_highlight(["<script>alert(1)</script>"], [1.0]).html, "tokens are not escaped"
assert len(ex.order()) > 0, "the explorer offers no latents"
