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

from kit.figures import activation_histogram, domain_heatmap, domain_profile_bar
from kit.interpret import interpret_run, load_interpretation
from kit.presets import get_preset, run_dir
from kit.run import ensure_run
from kit.widgets import explorer, sample_card, setup_plotly, token_highlight

setup_plotly()
config = get_preset(PRESET)
out = run_dir(config.name)

# %% [markdown]
# ## 1. Load the run and its interpretation
# Notebooks 01 and 02 saved them; if they are missing this trains and interprets the run now.

# %%
metrics = ensure_run(config, out)
analysis, patterns = load_interpretation(out)
if analysis is None:
    from kit import TranscoderActivationsStore, load_model
    model, tok = load_model(config.model)
    store = TranscoderActivationsStore(model, config.source, config.layer, tokenizer=tok, config=config.store)
    analysis, patterns = interpret_run(out, store)
samples = pd.read_parquet(out / "samples.parquet")
print(f"{samples.latent.nunique():,} latents with samples, {len(samples):,} sample rows")

# %% [markdown]
# ## 2. The explorer
# Controls: latent, sort (max, mean, specialization), domain filter, number of samples.

# %%
ex = explorer(samples, latents=analysis["latents"], profile=analysis["profile"], logit_lens=patterns["logit_lens"])
ex

# %% [markdown]
# ## 3. One latent in detail
# The most specialized latent with samples: its card, activation histogram and domain profile.

# %%
table = analysis["latents"]
ranked = table[table.latent.isin(samples.latent.unique())].sort_values(["class", "top_lift"], ascending=[False, False])
latent = int(ranked[ranked["class"] == "specialist"].latent.iloc[0] if (ranked["class"] == "specialist").any()
             else ranked.latent.iloc[0])
HTML(sample_card(samples[samples.latent == latent], label=patterns["labels"].get(latent),
                 profile=analysis["profile"], logit_lens=patterns["logit_lens"].set_index("latent").loc[[latent]]
                 if latent in set(patterns["logit_lens"].latent) else None))

# %%
activation_histogram(samples, latent)

# %%
domain_profile_bar(analysis["profile"], latent)

# %% [markdown]
# ## 4. Latents × domains
# Share of firing per domain for the 25 latents with the highest maximum activation.

# %%
strongest = samples[samples.kind == "top"].groupby("latent").activation.max().nlargest(25).index.tolist()
domain_heatmap(analysis["profile"], strongest)

# %% [markdown]
# ## Checks

# %%
ex.latent.value = latent
ex.n.value = 2
html = ex.render()
assert f"latent {latent}" in html.lower() or str(latent) in html, "the explorer does not show the chosen latent"
assert "<script>alert" not in token_highlight(["<script>alert(1)</script>"], [1.0]).html, "tokens are not escaped"
assert len(ex.order()) > 0, "the explorer offers no latents"
