"""bench/gpu.py --tiny: the GPU benchmark's whole path (Gemma-2 built from a config, pre-tokenized random records
through the kit's store, TopK training, memory plan) on a tiny model on the CPU, with its JSON on stdout."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATES = ("store_tokens_per_s", "train_step_tokens_per_s", "end_to_end_tokens_per_s")


# ~11 s on a loaded 2-core machine (mostly imports of transformers, datasets, nnsight): not marked slow
def test_gpu_bench_tiny_prints_its_measurements_as_json():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--steps", "4"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout holds the JSON alone; the run's own lines go to stderr
    assert result["card"] == "cpu (--tiny)" and result["device"] == "cpu"
    assert (result["layer"], result["latents"], result["k"], result["batch"]) == (8, 256, 8, 512)
    assert result["end_to_end_steps"] == 4
    for key in (*RATES, "peak_memory_gib", "memory_plan_total_gib", "memory_plan_without_evaluation_gib"):
        assert result[key] > 0, key
    assert {"LM weights", "transcoder + grads + Adam", "training batch"} <= set(result["memory_plan_gib"])
    assert result["precision"].startswith("transcoder step: ")
    assert "transcoder step: " in done.stderr, "the trainer's precision line goes to the log"
