"""Hook points against a manual computation of the same tensors, on tiny random configs of each family."""
import pytest
import torch
import torch.nn.functional as F
from nnsight import NNsight

from kit.lm.hooks import hook_points
from kit.lm.access import read_activations as trace_activations

LAYER = 1


def tiny(family):
    import transformers as tf
    common = dict(vocab_size=97, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  hidden_size=32, intermediate_size=48, max_position_embeddings=64)
    if family == "llama":
        config = tf.LlamaConfig(**common)
    elif family == "gemma2":
        config = tf.Gemma2Config(**common, head_dim=8, attn_implementation="eager")
    else:
        config = tf.GPT2Config(vocab_size=97, n_layer=3, n_head=4, n_embd=32, n_positions=64)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norm gains start at 0/1; randomize them so the manual check can tell them apart
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def capture(model, block, attn):
    """Residual input of the block, its attention output and its output, with plain PyTorch hooks."""
    seen = {}
    hooks = [block.register_forward_pre_hook(
                 lambda m, a, k: seen.update(h=a[0] if a else k["hidden_states"]), with_kwargs=True),
             attn.register_forward_hook(lambda m, i, o: seen.update(attn=o[0])),
             block.register_forward_hook(lambda m, i, o: seen.update(out=o[0] if isinstance(o, tuple) else o))]
    return seen, hooks


def rms(x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def manual(family, model, seen):
    if family == "llama":
        block = model.model.layers[LAYER]
        mid = seen["h"] + seen["attn"]
        x = rms(mid, block.post_attention_layernorm.variance_epsilon) * block.post_attention_layernorm.weight
        mlp = block.mlp
        y = F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
        return x, y, mid
    if family == "gemma2":
        block = model.model.layers[LAYER]
        ln = block.post_attention_layernorm
        mid = seen["h"] + rms(seen["attn"], ln.eps) * (1 + ln.weight)
        x_norm = rms(mid, block.pre_feedforward_layernorm.eps)  # Gemma Scope: before the (1 + w) gain
        x = x_norm * (1 + block.pre_feedforward_layernorm.weight)
        mlp = block.mlp
        h = F.gelu(F.linear(x, mlp.gate_proj.weight), approximate="tanh") * F.linear(x, mlp.up_proj.weight)
        post = block.post_feedforward_layernorm
        y = rms(F.linear(h, mlp.down_proj.weight), post.eps) * (1 + post.weight)
        return x_norm, y, mid
    block = model.transformer.h[LAYER]
    mid = seen["h"] + seen["attn"]
    x = F.layer_norm(mid, (mid.shape[-1],), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    y = F.gelu(x @ block.mlp.c_fc.weight + block.mlp.c_fc.bias, approximate="tanh")
    y = y @ block.mlp.c_proj.weight + block.mlp.c_proj.bias
    return x, y, mid


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_hook_points_match_manual_computation(family):
    model = tiny(family)
    hp = hook_points(model, LAYER)
    block = model.transformer.h[LAYER] if family == "gpt2" else model.model.layers[LAYER]
    seen, handles = capture(model, block, block.attn if family == "gpt2" else block.self_attn)
    ids = torch.randint(0, 97, (3, 11))
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    x_ref, y_ref, mid = manual(family, model, seen)
    with torch.inference_mode():
        x, y = trace_activations(NNsight(model), hp, ids)
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    # The target is exactly what the block adds to the residual stream through its MLP.
    torch.testing.assert_close(seen["out"], mid + y, rtol=1e-5, atol=1e-5)


def test_gemma_input_is_norm_output_without_gain():
    model = tiny("gemma2")
    ln = model.model.layers[LAYER].pre_feedforward_layernorm
    got = {}
    handle = ln.register_forward_hook(lambda m, i, o: got.update(out=o))
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        model(ids)
        x, _ = trace_activations(NNsight(model), hook_points(model, LAYER), ids)
    handle.remove()
    gain = 1 + ln.weight.detach()
    assert gain.abs().min() > 0.05, "the check divides by the gain; it must not be near zero"
    # docs/design.md's definition: pre_feedforward_layernorm.output / (1 + weight).
    torch.testing.assert_close(x, got["out"] / (1 + ln.weight), rtol=1e-4, atol=1e-5)


def test_layer_out_of_range_names_valid_range():
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.2"):
        hook_points(tiny("llama"), 3)


def test_unsupported_architecture_names_supported_ones():
    import transformers as tf
    model = tf.AutoModelForCausalLM.from_config(tf.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                             ffn_dim=32, num_attention_heads=2))
    with pytest.raises(ValueError, match=r"supported families are .*gemma2.*gpt2.*llama"):
        hook_points(model, 0)
