"""The memory plan: known model shapes, the GPU target's fit, and `python -m kit train --dry-run`."""
import pytest
import torch

from kit.memory import GiB, KNOWN_SHAPES, lm_params, memory_plan, print_plan, shape_from_config
from kit.presets import GEMMA_2_2B_L8, SMOKE


def test_gemma_2_2b_l8_fits_80_gib_with_margin():
    plan = memory_plan(GEMMA_2_2B_L8, 80 * GiB)
    assert plan.rows and all(r.bytes > 0 for r in plan.rows), plan.format()
    assert plan.total == sum(r.bytes for r in plan.rows)
    assert plan.fits(margin=0.25), plan.format()
    assert {"LM weights", "evaluation peak", "store buffer", "transcoder + grads + Adam"} <= {r.name for r in plan.rows}
    assert "fits" in plan.format() and "DOES NOT FIT" in memory_plan(GEMMA_2_2B_L8, 8 * GiB).format()


def test_gemma_shape_and_params_match_transformers_without_weights():
    import transformers as tf
    config = tf.Gemma2Config()  # its defaults are gemma-2-2b's shape
    assert shape_from_config(config) == KNOWN_SHAPES["google/gemma-2-2b"]
    with torch.device("meta"):  # parameters without memory
        model = tf.AutoModelForCausalLM.from_config(config)
    assert lm_params(KNOWN_SHAPES["google/gemma-2-2b"]) == sum(p.numel() for p in model.parameters())


def test_embedded_shape_matches_the_real_model(embedded):
    model, _ = embedded
    shape = KNOWN_SHAPES["embedded"]
    assert shape_from_config(model.config) == shape
    # Llama has 2 norms per layer, the count assumes Gemma's 4: within 0.1%.
    assert lm_params(shape) == pytest.approx(sum(p.numel() for p in model.parameters()), rel=1e-3)


def test_unknown_model_says_so():
    plan = memory_plan(SMOKE.override(["model=no-such-org/no-such-model"]))
    assert not plan.rows and "unknown model shape" in plan.format()


def test_print_plan_prints_and_returns_the_plan(capsys):
    plan = print_plan(SMOKE, "cpu", 16 * GiB)
    assert plan.device_bytes == 16 * GiB and capsys.readouterr().out.strip() == plan.format()


def test_cli_dry_run_prints_the_plan_and_loads_nothing(capsys, monkeypatch):
    import kit.corpus.records
    import kit.lm.models
    from kit.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("--dry-run must not load a model or a dataset")

    monkeypatch.setattr(kit.lm.models, "load_model", refuse)
    monkeypatch.setattr(kit.corpus.records, "open_source", refuse)
    main(["train", "--preset", "gemma-2-2b-l8", "--dry-run", "--device-gib", "80"])
    out = capsys.readouterr().out
    assert out.strip() == memory_plan(GEMMA_2_2B_L8, 80 * GiB).format()
    assert "evaluation peak" in out and "fits" in out
