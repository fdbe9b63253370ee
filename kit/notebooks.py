"""Execute the paired notebooks top to bottom and keep executed copies (the README's main-job command)."""
from __future__ import annotations

import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebooks(names: list[str], out: Path, timeout: int = 3600) -> list[Path]:
    """Run `notebooks/<name>.py` (all of them, in order, when `names` is empty); write `<out>/<name>.ipynb`."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    sources = sorted(NOTEBOOK_DIR.glob("*.py"))
    if names:
        sources = [s for s in sources if s.stem in names]
        if len(sources) != len(names):
            known = [s.stem for s in sorted(NOTEBOOK_DIR.glob("*.py"))]
            raise ValueError(f"unknown notebook among {names}; choose from {known}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        start = time.perf_counter()
        nb = jupytext.read(source)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
        target = out / f"{source.stem}.ipynb"
        nbformat.write(nb, target)
        written.append(target)
        print(f"{source.name}: executed in {time.perf_counter() - start:.0f} s -> {target}", flush=True)
    return written
