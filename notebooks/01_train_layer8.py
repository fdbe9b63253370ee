# %% [markdown]
# # 01 · Train a transcoder on layer 8
# A transcoder learns to replace layer 8's MLP with a wide, sparse dictionary: MLP input in, MLP output out.
# You will see real activations from the model, the warmup+decay schedule, training curves, the held-out metrics
# and the top-activating samples that were collected *while* it trained.
#
# The `smoke` preset runs in minutes on a laptop CPU with the embedded SmolLM2-135M and a multi-domain corpus
# (no downloads). On a GPU set `KIT_PRESET=gemma-2-2b-l8` (Gemma-2-2B is gated: accept its licence on the hub
# and provide `HF_TOKEN` as an environment variable or a Colab secret).

# %% tags=["parameters"]
import os

PRESET = os.environ.get("KIT_PRESET", "smoke")

# %%
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from IPython.display import HTML, display

from kit import load_model
from kit.presets import get_preset, run_dir
from kit.run import ensure_run
from kit.schedule import lr_multiplier, sparsity_multiplier
from kit.store import TranscoderActivationsStore
from kit.widgets import setup_plotly, token_highlight

setup_plotly()  # figures embed plotly.js, so they still show in a static HTML export
config = get_preset(PRESET)
out = run_dir(config.name)
print(f"preset {config.name}: model {config.model}, layer {config.layer}, {config.latents.d_latent:,} latents "
      f"({config.latents.activation}, k={config.latents.k}), {config.train.steps:,} steps -> {out}")

# %% [markdown]
# ## 1. Load the model
# `load_model` returns the transformers model and its tokenizer; the embedded default needs no network.

# %%
model, tok = load_model(config.model, dtype=getattr(torch, config.model_dtype),
                        device="cuda" if torch.cuda.is_available() else "cpu")
n_params = sum(p.numel() for p in model.parameters())
print(f"{type(model).__name__}: {model.config.num_hidden_layers} layers, d_model {model.config.hidden_size}, "
      f"{n_params / 1e6:.0f}M parameters")

# %% [markdown]
# ## 2. One batch from the activation store
# The store runs the model up to layer 8 (and no further), shuffles tokens from many contexts, and remembers where
# every row came from.

# %%
store = TranscoderActivationsStore(model, config.source, config.layer, tokenizer=tok, config=config.store)
batch = store.get_batch_with_tokens()
print(f"x_in {tuple(batch.x_in.shape)}, y_out {tuple(batch.y_out.shape)}, "
      f"{batch.doc_ids.unique().numel()} documents and {batch.domains.unique().numel()} domains in one batch")
rows = pd.DataFrame({"domain": [store.domain_names[d] for d in batch.domains[:6].tolist()],
                     "position": batch.positions[:6].tolist(),
                     "text around the token": [store.decode_context(g, 12, 0) for g in batch.global_ids[:6].tolist()]})
rows

# %%
norms = pd.DataFrame({"‖x_in‖ (MLP input)": batch.x_in.float().norm(dim=1).numpy(),
                      "‖y_out‖ (MLP output)": batch.y_out.float().norm(dim=1).numpy()}).melt(var_name="tensor")
px.histogram(norms, x="value", color="tensor", nbins=80, barmode="overlay", log_y=True,
             title="Activation norms of one shuffled batch")

# %% [markdown]
# ## 3. The schedule
# The learning rate warms up linearly, then decays (cosine by default) to a floor; the sparsity coefficient warms up too.

# %%
sched = config.train.schedule
steps = list(range(sched.total_steps))
fig = go.Figure([go.Scatter(x=steps, y=[sched.lr * lr_multiplier(s, sched) for s in steps], name="learning rate"),
                 go.Scatter(x=steps, y=[sched.lr * sparsity_multiplier(s, sched) for s in steps],
                            name="sparsity coefficient × lr (shape only)", line={"dash": "dot"})])
fig.update_layout(title=f"{sched.n_warmup} warmup steps, {sched.decay} decay to {sched.min_lr_ratio:.0%}",
                  xaxis_title="step")

# %% [markdown]
# ## 4. Train
# `ensure_run` trains (or resumes from the last checkpoint, or loads a finished run), evaluates on held-out
# contexts, runs the frozen final top-k pass and writes the run folder. `python -m kit train` does the same.

# %%
metrics = ensure_run(config, out, model=model, tokenizer=tok)
history = pd.read_csv(out / "history.csv")
pd.Series({k: v for k, v in metrics.items() if isinstance(v, (int, float))}).round(4).to_frame("value")

# %%
long = history.melt(id_vars="step", value_vars=["fvu", "l0", "dead_frac", "lr"])
px.line(long, x="step", y="value", facet_row="variable", height=650,
        title="Training history").update_yaxes(matches=None)

# %% [markdown]
# ## 5. What the collector kept
# During training the collector kept, for every latent, the contexts that activated it most; the final pass
# re-collected them with frozen weights. Windows are re-scored with the final weights.

# %%
samples = pd.read_parquet(out / "samples.parquet")
training_top = samples[(samples.phase == "training") & (samples.kind == "top")]
per_latent = training_top.groupby("latent").size()
print(f"latents with samples: {per_latent.size:,} of {config.latents.d_latent:,}; total samples: {len(training_top):,}; "
      f"average per latent: {per_latent.mean():.1f}; top-k retention (in-training top-k still in the final top-k): "
      f"{metrics['topk_retention']:.1%}")

# %%
strongest = training_top.sort_values("activation", ascending=False).drop_duplicates("latent").head(3)
for latent in strongest.latent:
    rows = training_top[training_top.latent == latent].sort_values("rank").head(3)
    display(HTML(f"<h4>latent {latent}</h4>"))
    for r in rows.itertuples():
        display(token_highlight(list(r.context_tokens), list(r.context_acts), highlight_index=r.token_index))

# %% [markdown]
# ## Checks

# %%
assert batch.x_in.shape[1] == model.config.hidden_size, "store rows do not have the model's width"
assert (batch.token_ids != tok.bos_token_id).all(), "a BOS row came out of the store"
assert 0 <= metrics["fvu"] < 1, f"the transcoder explains no variance (FVU {metrics['fvu']:.3f})"
assert metrics["ce_loss_recovered"] > 0, "splicing the transcoder is worse than zero-ablating the MLP"
assert len(history) and history.step.iloc[-1] == config.train.steps, "history.csv does not reach the last step"
assert per_latent.size > 0, "the collector kept no samples"
