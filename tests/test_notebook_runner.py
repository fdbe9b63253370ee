"""`python -m kit notebooks` shows progress while a notebook runs and shuts kernels down cleanly; the live training
figure redraws in place and leaves one ordinary plotly output in the saved notebook."""
import time

import nbformat
import pandas as pd
import pytest

from kit.config import TrainConfig
from kit.notebooks import BarRelay, LineRelay, run_notebook
from kit.view.live import LiveFigure, history_figure, status_line, update_every

TINY = '''# %%
import time
for i in range(5):
    print(f"line {i}", flush=True)
    time.sleep(0.25)

# %%
import pandas as pd
from kit.view import setup_plotly
from kit.view.live import LiveFigure
setup_plotly()
live = LiveFigure("history.csv", total_steps=30, title="tiny").show()
rows = []
for step in (10, 20, 30):
    rows.append({"step": step, "loss": 1 / step, "fvu": 0.5, "l0": 8.0, "dead_frac": 0.0, "tokens_per_s": 100.0})
    pd.DataFrame(rows).to_csv("history.csv", index=False)
    live.update()

# %%
from tqdm.auto import tqdm
for _ in tqdm(range(10), desc="bar"):
    time.sleep(0.05)
'''


def history(steps):
    return pd.DataFrame({"step": steps, "loss": [1.0 / s for s in steps], "fvu": [0.4] * len(steps),
                         "l0": [32.0] * len(steps), "dead_frac": [0.1] * len(steps),
                         "tokens_per_s": [1000.0] * len(steps)})


def test_runner_relays_cells_as_they_run_and_shuts_the_kernel_down_cleanly(tmp_path, capfd):
    source = tmp_path / "tiny.py"
    source.write_text(TINY)
    seen = []

    def echo(line):
        seen.append((time.monotonic(), line))
        print(line, flush=True)

    target = run_notebook(source, tmp_path / "tiny.ipynb",
                          timeout=120, echo=echo, every=0.1)
    when = {line.strip(): t for t, line in seen}
    assert "line 0" in when and "line 4" in when, seen
    end = next(t for t, line in seen if line.startswith("[tiny 1/3] done in"))
    assert when["line 4"] - when["line 0"] > 0.5, "lines came in one lump at the end of the cell, not as printed"
    assert end - when["line 0"] > 0.5
    assert any("bar" in line and "10/10" in line for _, line in seen), "the tqdm widget bar was not relayed"
    assert seen[-1][1].startswith("tiny.py: executed in")
    terminal = capfd.readouterr()
    text = terminal.out + terminal.err
    assert "line 2" in terminal.out and "[tiny 3/3] done in" in terminal.out
    assert "KeyboardInterrupt" not in text and "ERROR" not in text, text

    nb = nbformat.read(target, as_version=4)
    figure_cell = nb.cells[1]
    plots = [o for o in figure_cell.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plots) == 1, "the live figure must be one output, replaced in place"
    data = plots[0]["data"]
    assert data["application/vnd.plotly.v1+json"]["data"][0]["x"] == [10, 20, 30], "not the figure's last state"
    assert "Plotly.newPlot" in data["text/html"], "a static HTML export needs the figure's text/html"
    assert "step 30/30" in data["text/plain"]


def test_line_relay_condenses_carriage_returns():
    clock = iter(range(100)).__next__
    relay = LineRelay(every=5, clock=clock)
    assert relay.feed("stdout", "hello\nwor") == ["hello"]
    assert relay.feed("stdout", "ld\n") == ["world"]
    assert relay.feed("stderr", "\r 10%") == [" 10%"]
    assert relay.feed("stderr", "\r 20%") == [], "an update within `every` seconds is held back"
    assert relay.flush() == [" 20%"], "the last update is shown at the end"
    assert relay.feed("stderr", "\r 30%\r 40%|#| 4/10\r100%|##| 10/10\n") == ["100%|##| 10/10"]
    assert relay.feed("stdout", "\n\n") == [] and relay.flush() == []


def test_bar_relay_reads_tqdm_widget_text():
    clock = iter(range(0, 1000, 1)).__next__
    states = {"L": {"_model_name": "HTMLModel", "value": "train:\u2007\u200750%"},
              "P": {"_model_name": "FloatProgressModel", "value": 5, "max": 10},
              "R": {"_model_name": "HTMLModel", "value": "5/10 [00:01&lt;00:01]"},
              "B": {"_model_name": "HBoxModel", "children": ["IPY_MODEL_L", "IPY_MODEL_P", "IPY_MODEL_R"]},
              "X": {"_model_name": "HTMLModel", "value": "<b>not a bar</b>"}}
    relay = BarRelay(every=10, clock=clock)
    assert relay.see(states, "R") == ["train:  50% 5/10 [00:01<00:01]"]
    assert relay.see(states, "X") == []
    states["R"]["value"] = "6/10"
    assert relay.see(states, "R") == [] and relay.flush() == ["train:  50% 6/10"]


def test_history_figure_and_status():
    fig = history_figure(history([10, 20]), total_steps=40, title="run")
    assert [list(t.x) for t in fig.data] == [[10, 20]] * 4
    assert fig.layout.xaxis.range == (0, 40) and fig.layout.yaxis.type == "log"
    assert "step 20/40" in fig.layout.title.text and "FVU 0.400" in fig.layout.title.text
    assert status_line(history([])[:0], 40).startswith("step 0/40")


def test_live_figure_outside_ipython_rereads_the_history(tmp_path):
    path = tmp_path / "history.csv"
    live = LiveFigure(path, 30).show()
    assert live.handle is None and all(len(t.x) == 0 for t in live.figure.data)
    history([10, 20]).to_csv(path, index=False)
    assert list(live.update().data[0].x) == [10, 20] and "step 20/30" in live.status


@pytest.mark.parametrize("steps, log_every, checkpoint_every, want", [
    (160, 10, 40, 10), (400, 20, 50, 20), (30_000, 50, 1000, 1000), (5, 10, 100, 10), (1000, 7, 30, 30)])
def test_update_every(steps, log_every, checkpoint_every, want):
    train = TrainConfig(steps=steps, log_every=log_every, checkpoint_every=checkpoint_every)
    assert update_every(train) == want
