"""Execute the paired notebooks top to bottom, keep executed copies, and show their progress in the terminal.

A kernel's prints go into the notebook and its tqdm bars are widgets, so a terminal running `make run` would see
nothing until a notebook ends. `RelayingClient` prints a line when each code cell starts and when it ends (with its
time), relays the cell's stdout and stderr as they arrive (carriage-return updates condensed to one line every
`every` seconds, and the last one), and the text of tqdm's notebook bars at the same pace.
"""
from __future__ import annotations

import asyncio
import html
import time
from pathlib import Path
from typing import Callable

from jupyter_core.utils import ensure_async
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EVERY = 10.0  # seconds between two relayed updates of one progress line


def echo_line(line: str) -> None:
    """Print one progress line at once (the default `echo`)."""
    print(line, flush=True)


def run_notebooks(names: list[str], out: Path, timeout: int = 3600, echo: Callable[[str], None] = echo_line,
                  every: float = EVERY) -> list[Path]:
    """Run `notebooks/<name>.py` (all of them, in order, when `names` is empty); write `<out>/<name>.ipynb`."""
    sources = sorted(NOTEBOOK_DIR.glob("*.py"))
    if names:
        sources = [s for s in sources if s.stem in names]
        if len(sources) != len(names):
            known = [s.stem for s in sorted(NOTEBOOK_DIR.glob("*.py"))]
            raise ValueError(f"unknown notebook among {names}; choose from {known}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [run_notebook(s, out / f"{s.stem}.ipynb", timeout, echo, every) for s in sources]


def run_notebook(source: Path, target: Path, timeout: int = 3600, echo: Callable[[str], None] = echo_line,
                 every: float = EVERY) -> Path:
    """Execute `source` (a jupytext `.py` or an `.ipynb`) in its own folder and write the executed copy to `target`,
    also when a cell fails (the error is then raised after writing)."""
    import jupytext
    import nbformat
    source, target = Path(source), Path(target)
    nb = jupytext.read(source)
    client = RelayingClient(nb, name=source.stem, echo=echo, every=every, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, target)
    echo(f"{source.name}: executed in {time.perf_counter() - start:.0f} s -> {target}")
    return target


def last_segment(text: str) -> str:
    """What a terminal would show of `text` after its carriage returns: the last non-blank segment."""
    return next((seg for seg in reversed(text.split("\r")) if seg.strip()), "")


class LineRelay:
    """A kernel stream's chunks as terminal lines: whole lines at once; a carriage-return update (a text progress
    bar) at most once every `every` seconds, and the last one on `flush()`."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.streams: dict[str, dict] = {}  # per stream: text after its last newline, latest update, what was shown

    def feed(self, name: str, text: str) -> list[str]:
        s = self.streams.setdefault(name, {"rest": "", "latest": "", "shown": "", "when": float("-inf")})
        *lines, rest = (s["rest"] + text).split("\n")
        out = [shown for line in lines if (shown := last_segment(line))]
        if lines:
            s["latest"] = s["shown"] = ""
        if "\r" in rest:  # an update in place: only its last version counts
            s["latest"], rest = last_segment(rest) or s["latest"], rest.rsplit("\r", 1)[-1]
            if s["latest"] and s["latest"] != s["shown"] and self.clock() - s["when"] >= self.every:
                out.append(s["latest"])
                s["shown"], s["when"] = s["latest"], self.clock()
        s["rest"] = rest
        return out

    def flush(self) -> list[str]:
        """The last state of every stream's unfinished line, unless it was just relayed."""
        out = [last for s in self.streams.values()
               if (last := last_segment(s["rest"]) or s["latest"]) and last != s["shown"]]
        self.streams = {}
        return out


def bar_text(states: dict[str, dict], box: dict) -> str | None:
    """The text of a tqdm notebook bar (an HBox of HTML, a progress widget and HTML), or None for other boxes."""
    parts = [states.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in box.get("children", [])]
    if box.get("_model_name") != "HBoxModel" or len(parts) != 3 or \
            "Progress" not in str(parts[1].get("_model_name", "")):
        return None
    left, right = (html.unescape(str(p.get("value", ""))).replace("\u2007", " ").strip() for p in (parts[0], parts[2]))
    return f"{left} {right}".strip() or None


class BarRelay:
    """The text of every tqdm notebook bar, at most once every `every` seconds per bar, and its last state when
    another bar moves or on `flush()` (tqdm pushes widget updates every 0.1 s; a terminal needs far fewer)."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.bars: dict[str, dict] = {}  # per box id: latest text, what was shown and when
        self.current: str | None = None

    def see(self, states: dict[str, dict], changed: str) -> list[str]:
        """Lines to relay after widget `changed` took a new state (`states`: every widget's state by id)."""
        out = []
        for box_id, box in states.items():
            if f"IPY_MODEL_{changed}" not in box.get("children", ()) or (text := bar_text(states, box)) is None:
                continue
            if box_id != self.current:  # finish the previous bar first, so lines keep their order
                out += self._unshown(self.current)
                self.current = box_id
            bar = self.bars.setdefault(box_id, {"latest": None, "shown": None, "when": float("-inf")})
            bar["latest"] = text
            if text != bar["shown"] and self.clock() - bar["when"] >= self.every:
                bar["shown"], bar["when"] = text, self.clock()
                out.append(text)
        return out

    def _unshown(self, box_id: str | None) -> list[str]:
        bar = self.bars.get(box_id)
        if bar is None or bar["latest"] == bar["shown"]:
            return []
        bar["shown"] = bar["latest"]
        return [bar["latest"]]

    def flush(self) -> list[str]:
        out = [line for box_id in list(self.bars) for line in self._unshown(box_id)]
        self.bars, self.current = {}, None
        return out


class RelayingClient(NotebookClient):
    """An nbclient `NotebookClient` that echoes progress to the terminal (see the module docstring) and shuts its
    kernel down by asking it to stop rather than by interrupting it."""

    def __init__(self, nb, name: str = "notebook", echo: Callable[[str], None] = echo_line, every: float = EVERY,
                 **kw):
        super().__init__(nb, **kw)
        self.name, self.echo = name, echo
        self.lines, self.bars = LineRelay(every), BarRelay(every)
        self.code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
        self.started: dict[int, float] = {}
        self.on_cell_start, self.on_cell_executed = self._cell_started, self._cell_executed

    def _label(self, index: int) -> str:
        return f"[{self.name} {self.code.index(index) + 1}/{len(self.code)}]"

    def _cell_started(self, cell, cell_index: int, **_) -> None:
        if cell_index in self.code:
            lines = [s for s in cell.source.splitlines() if s.strip() and not s.lstrip().startswith("#")]
            first = (lines or [""])[0].strip()
            self.echo(f"{self._label(cell_index)} {first[:90] + ('...' if len(first) > 90 else '')}")
            self.started[cell_index] = time.perf_counter()

    def _cell_executed(self, cell, cell_index: int, execute_reply=None, **_) -> None:
        for line in self.lines.flush() + self.bars.flush():
            self.echo(f"    {line}")
        status = (execute_reply or {}).get("content", {}).get("status", "ok")
        seconds = time.perf_counter() - self.started.pop(cell_index, time.perf_counter())
        self.echo(f"{self._label(cell_index)} {'done' if status == 'ok' else 'FAILED'} in {seconds:.1f} s")

    def process_message(self, msg: dict, cell, cell_index: int):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            relayed = self.lines.feed(content.get("name", "stdout"), content.get("text", ""))
        elif kind == "error":
            relayed = [f"{content.get('ename')}: {content.get('evalue')}"]
        else:
            relayed = []
        for line in relayed:
            self.echo(f"    {line}")
        return super().process_message(msg, cell, cell_index)

    def handle_comm_msg(self, outs, msg: dict, cell_index: int) -> None:
        super().handle_comm_msg(outs, msg, cell_index)
        if msg["msg_type"] == "comm_msg" and "state" in msg["content"].get("data", {}):
            for line in self.bars.see(self.widget_state, msg["content"]["comm_id"]):
                self.echo(f"    {line}")

    async def _async_cleanup_kernel(self) -> None:
        # jupyter_client's shutdown_kernel first interrupts the kernel (SIGINT to its process group), which a kernel
        # inside a handler logs as "ERROR | KeyboardInterrupt": ask it to stop, and give it the time shutdown_kernel
        # would; only a kernel still alive then goes the interrupting way.
        if self.kc is not None and self.km is not None and await ensure_async(self.km.is_alive()):
            await ensure_async(self.kc.shutdown())
            deadline = time.monotonic() + getattr(self.km, "shutdown_wait_time", 5.0)
            while time.monotonic() < deadline and await ensure_async(self.km.is_alive()):
                await asyncio.sleep(0.05)
        await super()._async_cleanup_kernel()
