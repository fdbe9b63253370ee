# %% [markdown]
# # 01 · Train a transcoder on layer 8
# Build the store, transcoder, collector and trainer for layer 8's MLP, train with live curves, finish the run.
# `smoke` runs in minutes on a CPU with the embedded SmolLM2-135M; `gemma-2-2b-l8` needs a GPU and `HF_TOKEN`.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("KIT_PRESET", "smoke")

# %%
import dataclasses
import time

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from IPython.display import HTML, display
from tqdm.auto import tqdm

from kit import TopKCollector, Trainer, Transcoder, TranscoderActivationsStore, load_model
from kit.memory import print_plan
from kit.presets import get_preset, run_dir
from kit.run import RUN_FILES, finish, finished_metrics, start_run
from kit.train.schedule import ScheduleConfig, lr_multiplier, sparsity_multiplier
from kit.view import setup_plotly, token_highlight
from kit.view.live import LiveFigure, update_every

setup_plotly()  # figures embed plotly.js, so they still show in a static HTML export
config = get_preset(PRESET)
out = run_dir(config.name)
metrics = finished_metrics(config, out)  # a finished run of this config is reused, not trained again
print(f"preset {config.name}: model {config.model}, layer {config.layer}, {config.latents.d_latent:,} latents "
      f"({config.latents.activation}, k={config.latents.k}), {config.train.steps:,} steps -> {out}"
      + (" (finished earlier: reusing it)" if metrics else ""))

# %% [markdown]
# ## 1. Load the model
# `load_model` returns the transformers model and its tokenizer; the embedded default needs no network.

# %%
device = "cuda" if torch.cuda.is_available() else "cpu"
model, tok = load_model(config.model, dtype=getattr(torch, config.model_dtype), device=device)
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
sched = ScheduleConfig.of(config.train)
steps = list(range(sched.total_steps))
fig = go.Figure([go.Scatter(x=steps, y=[sched.lr * lr_multiplier(s, sched) for s in steps], name="learning rate"),
                 go.Scatter(x=steps, y=[sched.lr * sparsity_multiplier(s, sched) for s in steps],
                            name="sparsity coefficient × lr (shape only)", line={"dash": "dot"})])
fig.update_layout(title=f"{sched.n_warmup} warmup steps, {sched.decay} decay to {sched.min_lr_ratio:.0%}",
                  xaxis_title="step")

# %% [markdown]
# ## 4. Build the run
# The pieces `python -m kit train` builds: a fresh store (so training starts at the stream's first batch), the
# transcoder, the collector that keeps every latent's top contexts *while* it trains, and the trainer, which writes
# checkpoints and `history.csv`. `start_run` checks the folder and writes `config.json`; an interrupted run resumes.

# %%
resume = metrics is None and start_run(config, out)  # True: a checkpoint of this config to continue from
store = TranscoderActivationsStore(model, config.source, config.layer, tokenizer=tok, config=config.store)
torch.manual_seed(config.store.seed)  # the command line's initial weights
transcoder = Transcoder(dataclasses.replace(config.latents, d_in=store.d_in, d_out=store.d_out)).to(device)
collector = TopKCollector(transcoder.cfg.d_latent, config.collector, device)
trainer = Trainer(transcoder, store, config.train, out, collector, config_dict=config.to_dict())
if resume:
    trainer.resume()
print_plan(config, device)
print(f"transcoder {transcoder.cfg.d_in} -> {transcoder.cfg.d_latent:,} latents -> {transcoder.cfg.d_out}; "
      + ("finished earlier" if metrics else f"at step {trainer.step} of {config.train.steps:,}"))

# %% [markdown]
# ## 5. Train, watching the curves
# `trainer.fit(stop_at=...)` is the plain training loop, run here in chunks (each ends with a checkpoint). After
# each chunk the figure redraws in place from `history.csv`; a saved or exported notebook keeps its final state.

# %%
live = LiveFigure(out / "history.csv", config.train.steps, title=f"Training {config.name}").show()
bar = tqdm(total=config.train.steps, initial=config.train.steps if metrics else trainer.step, desc="train")
start = time.perf_counter()
while metrics is None and trainer.step < config.train.steps:
    trainer.fit(stop_at=trainer.step + update_every(config.train), progress=False)
    live.update()
    bar.update(trainer.step - bar.n)
    bar.set_postfix_str(live.status)
bar.close()
seconds = time.perf_counter() - start

# %% [markdown]
# ## 6. Finish the run
# `finish` is what `python -m kit train` runs after its loop: held-out evaluation (FVU, L0, spliced ΔCE and KL, CE
# loss recovered), the frozen final top-k pass, then `samples.parquet`, `latents.csv`, `metrics.json` and the report.

# %%
if metrics is None:
    metrics = finish(trainer, config, out, seconds, progress=True, report=True)
pd.Series({k: v for k, v in metrics.items() if isinstance(v, (int, float))}).round(4).to_frame("value")

# %% [markdown]
# ## 7. What the collector kept
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
history = pd.read_csv(out / "history.csv")
missing = [name for name in RUN_FILES if not (out / name).exists()]
assert not missing, f"the run folder lacks {missing}, which `python -m kit train` writes"
assert batch.x_in.shape[1] == model.config.hidden_size, "store rows do not have the model's width"
assert (batch.token_ids != tok.bos_token_id).all(), "a BOS row came out of the store"
assert 0 <= metrics["fvu"] < 1, f"the transcoder explains no variance (FVU {metrics['fvu']:.3f})"
assert metrics["ce_loss_recovered"] > 0, "splicing the transcoder is worse than zero-ablating the MLP"
assert len(history) and history.step.iloc[-1] == config.train.steps, "history.csv does not reach the last step"
assert list(live.figure.data[0].x)[-1] == config.train.steps, "the training figure stops before the last step"
assert per_latent.size > 0, "the collector kept no samples"
