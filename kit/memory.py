"""Memory plan of a run: the bytes a `RunConfig` holds on its device, row by row, against the device's size.

Rows are added as if all were resident at once, so the total is an upper bound. Model shapes come from a small
built-in table, else from a locally cached transformers config (never the network, never the weights).
Symbols: B lm_batch, T ctx_len, D d_model, I the MLP width, H heads, V vocabulary, L latents, C chunk_tokens,
m the model dtype's bytes.

    lm_forward(B, T) = B·T·(8·D + 3·I)·m + B·H·T²·(4 + 2m) + 2·B·T²·m
        one no-grad forward holds one block's tensors at a time: residual, norms, q/k/v and MLP products,
        eager attention's scores (in m, then fp32 softmax, then m again) and its masks.
    evaluation peak = lm_forward(B, T) + 40·B·T·D + 12·C·L + 16·C·V       (see kit.interpret.evaluate)
        beyond the weights: one forward, ten fp32 [B, T, D] tensors, one transcoder chunk's pre-acts and acts,
        and four fp32 [C, V] tensors (the unembedding runs on C positions at a time).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple

from kit.interpret.evaluate import CHUNK_TOKENS

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class ModelShape(NamedTuple):
    """What the plan needs of a language model."""

    d_model: int
    n_layers: int
    d_mlp: int
    vocab: int
    n_heads: int
    head_dim: int
    n_kv_heads: int
    tied: bool


KNOWN_SHAPES = {
    "embedded": ModelShape(576, 30, 1536, 49_152, 9, 64, 3, True),  # SmolLM2-135M(-Instruct)
    "google/gemma-2-2b": ModelShape(2304, 26, 9216, 256_000, 8, 256, 4, True),
    "gpt2": ModelShape(768, 12, 3072, 50_257, 12, 64, 12, True),
}


def shape_from_config(c) -> ModelShape:
    """A transformers config's shape (Llama, Gemma and GPT-2 attribute names)."""
    d = getattr(c, "hidden_size", None) or c.n_embd
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d
    return ModelShape(d, getattr(c, "num_hidden_layers", None) or c.n_layer, mlp, c.vocab_size, heads,
                      getattr(c, "head_dim", None) or d // heads, getattr(c, "num_key_value_heads", None) or heads,
                      bool(getattr(c, "tie_word_embeddings", True)))


def model_shape(name: str) -> ModelShape | None:
    """The shape of a model name from the table or a cached config; None when neither knows it."""
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    try:
        from transformers import AutoConfig
        return shape_from_config(AutoConfig.from_pretrained(name, local_files_only=True))
    except Exception:  # not cached, not a folder, or not a causal LM config: the plan says "unknown"
        return None


def lm_params(s: ModelShape) -> int:
    """Parameter count: embeddings, attention, a gated MLP (3 matrices; GPT-2's has 2) and norms per layer."""
    attn = s.d_model * s.head_dim * 2 * (s.n_heads + s.n_kv_heads)
    layer = attn + 3 * s.d_model * s.d_mlp + 4 * s.d_model
    return s.vocab * s.d_model * (1 if s.tied else 2) + s.n_layers * layer + s.d_model


def lm_forward_bytes(s: ModelShape, B: int, T: int, m: int) -> int:
    """Peak activations of one no-grad forward of B contexts of T tokens (module docstring)."""
    return B * T * (8 * s.d_model + 3 * s.d_mlp) * m + B * s.n_heads * T * T * (4 + 2 * m) + 2 * B * T * T * m


def eval_peak_bytes(s: ModelShape, B: int, T: int, m: int, d_latent: int, chunk_tokens: int = CHUNK_TOKENS) -> int:
    """Bound on `kit.interpret.evaluate.evaluate`'s peak beyond the weights (module docstring)."""
    C = chunk_tokens
    return lm_forward_bytes(s, B, T, m) + 40 * B * T * s.d_model + 12 * C * d_latent + 16 * C * s.vocab


class Row(NamedTuple):
    name: str
    bytes: int
    formula: str


@dataclass(frozen=True)
class MemoryPlan:
    """Rows of (name, bytes, formula) and the device's size, if known."""

    title: str
    rows: tuple[Row, ...]
    device_bytes: int | None = None
    note: str = ""

    host: tuple[Row, ...] = ()
    """Host-RAM rows per rank (not on the device; not in `total`)."""

    @property
    def total(self) -> int:
        return sum(r.bytes for r in self.rows)

    def fits(self, margin: float = 0.0) -> bool:
        """True when the total leaves at least `margin` (a fraction) of the device free."""
        return self.device_bytes is not None and self.total <= (1 - margin) * self.device_bytes

    def format(self) -> str:
        """A readable table, the total, and the device's size with the margin left."""
        lines = [f"memory plan: {self.title}"]
        if self.note:
            return "\n".join(lines + [f"  {self.note}"])
        lines += [f"  {r.name:<28}{r.bytes / GiB:>8.2f} GiB   {r.formula}" for r in self.rows]
        lines.append(f"  {'total (all rows at once)':<28}{self.total / GiB:>8.2f} GiB")
        if self.device_bytes:
            left = self.device_bytes - self.total
            verdict = "fits" if left >= 0 else "DOES NOT FIT"
            lines.append(f"  {'device':<28}{self.device_bytes / GiB:>8.2f} GiB   {verdict}: "
                         f"{left / GiB:.2f} GiB ({left / self.device_bytes:.0%}) left")
        lines += [f"  host RAM per rank: {r.name:<18}{r.bytes / GiB:>8.2f} GiB   {r.formula}" for r in self.host]
        return "\n".join(lines)


def memory_plan(config, device_bytes: int | None = None, world: int = 1, points=None) -> MemoryPlan:
    """The memory plan of a `kit.presets.RunConfig` on a device of `device_bytes` (None: size unknown), for one of
    `world` ranks; `points` are the configs of a sweep's transcoders, all fed by `config`'s store."""
    points = list(points or [config])
    title = f"{config.name} ({config.model}, layer {config.layer})"
    title += f", a sweep of {len(points)} transcoders" if len(points) > 1 else ""
    s = model_shape(config.model)
    if s is None:
        return MemoryPlan(title, (), device_bytes, f"unknown model shape for {config.model!r}: not in "
                          f"kit.memory.KNOWN_SHAPES and no cached transformers config")
    return MemoryPlan(title, tuple(_rows(config, s, points)), device_bytes,
                      host=tuple(_host_rows(config, world)))


def _rows(config, s: ModelShape, points: list) -> list[Row]:
    st = config.store
    m, sb = DTYPE_BYTES[config.model_dtype], DTYPE_BYTES[st.dtype]
    B, T, D = st.lm_batch, st.ctx_len, s.d_model
    L = max(p.latents.d_latent for p in points)  # the points step one at a time: one batch's tensors at once
    mix, refill = getattr(st, "mix_refills", 1), st.refill_contexts * T  # mix_refills: resident refills
    tc = sum(2 * D * p.latents.d_latent + p.latents.d_latent + D + (D * D if p.latents.skip else 0)
             + (p.latents.d_latent if p.latents.activation == "jumprelu" else 0) for p in points)
    slot_bytes = sum(3 * p.latents.d_latent * (p.collector.k + p.collector.n_intervals * p.collector.per_interval)
                     * 20 for p in points)
    of = f" x{len(points)}" if len(points) > 1 else ""
    return [
        Row("LM weights", lm_params(s) * m, f"{lm_params(s) / 1e9:.3g}e9 params x {m} B"),
        Row("LM forward activations", lm_forward_bytes(s, B, T, m), "B*T*(8D + 3I)*m + B*H*T^2*(4 + 2m) + 2*B*T^2*m"),
        Row("store buffer", refill * 2 * D * sb * (mix + 1),
            f"refill tokens {refill} x 2D x {sb} B x (mix_refills {mix} + the chunk handed out)"),
        Row("store refill transients", refill * 2 * D * (8 + 3 * sb),
            f"refill tokens x 2D x (8 + 3 x {sb} B): fp32 read and concat, stored, masked, shuffled copies"),
        Row("transcoder + grads + Adam" + of, 4 * tc * 4, f"4 x {tc / 1e6:.3g}e6 params x 4 B"),
        Row("training batch", st.batch_size * (4 * L + 2 * D) * 4,
            "batch x (4L + 2D) x 4 B: pre-acts, acts, AuxK copy, their grad; x and y"),
        Row("collectors" + of, slot_bytes, "3 x L x slots x 20 B (value, id, step): training, final, held-out"),
        Row("final-pass input cache", int(_input_cache_bytes()), "kit.collect.final_pass.InputCache max_bytes"),
        Row("evaluation peak", eval_peak_bytes(s, B, T, m, L) + 4 * B * T * D * (len(points) - 1),
            f"lm_forward + 40*B*T*D + 12*C*L + 16*C*V, C = {CHUNK_TOKENS}"
            + (", + 4*B*T*D per extra transcoder" if len(points) > 1 else "")),
    ]


def _host_rows(config, world: int) -> list[Row]:
    """The context table each rank keeps: its own training contexts (a 1/world share) and the held-out ones."""
    st = config.store
    contexts = -(-config.train.steps * st.batch_size // st.ctx_len) + st.holdout_contexts * world
    per_rank = contexts // world + st.holdout_contexts
    return [Row("context table", per_rank * (4 * st.ctx_len + 400),
                f"{per_rank:,} contexts x (4 B x ctx_len {st.ctx_len} + ~400 B of provenance)")]


def _input_cache_bytes() -> float:
    from kit.collect.final_pass import InputCache
    return inspect.signature(InputCache.__init__).parameters["max_bytes"].default


def device_bytes_of(device) -> int | None:
    """Total memory of a CUDA device, None for anything else (or no device given)."""
    import torch
    if device is None or not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory


def print_plan(config, device=None, device_bytes: int | None = None, world: int = 1, points=None) -> MemoryPlan:
    """Print the memory plan of `config` (a sweep's, with `points`) against `device`'s memory (or `device_bytes`)
    and return it."""
    plan = memory_plan(config, device_bytes if device_bytes is not None else device_bytes_of(device), world, points)
    print(plan.format(), flush=True)
    return plan
