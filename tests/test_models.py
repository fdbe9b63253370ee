"""Model loading: the embedded default, local folders, and errors that say what to do."""
import pytest
import torch

from kit.lm import models


def test_embedded_is_the_real_pretrained_model(embedded):
    model, tok = embedded
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.intermediate_size == 1536 and len(tok) == 49152
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_local_folder_round_trip(tmp_path, embedded):
    import transformers as tf
    _, tok = embedded
    torch.manual_seed(0)
    tiny = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=2, num_attention_heads=2))
    tiny.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, _ = models.load_model(str(tmp_path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and not model.training
    torch.testing.assert_close(model.lm_head.weight.float(), tiny.lm_head.weight.bfloat16().float())


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="embedded.*google/gemma-2-2b"):
        models.load_model("no-such-model")


@pytest.mark.parametrize("message, expected", [
    ("You are trying to access a gated repo. 401 Client Error", "HF_TOKEN"),
    ("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them", "local folder"),
])
def test_hub_errors_say_what_to_do(monkeypatch, message, expected):
    def fail(*args, **kwargs):
        raise OSError(message)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", fail)
    with pytest.raises(RuntimeError, match=expected):
        models.load_model("google/gemma-2-2b")
