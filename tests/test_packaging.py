"""environment.yml agrees with pyproject.toml, and notebook pairs have not drifted."""
import re
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def _spec(req: str) -> str:
    return req.replace(" ", "").lower()


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r): _spec(r) for r in pip if not r.startswith("-")}
    listed["torch"] = _spec(next(c for c in conda if c.startswith("pytorch")).replace("pytorch", "torch"))
    assert {_name(r): _spec(r) for r in wanted} == listed
    assert "-e .[dev]" in pip, "environment.yml must install the kit itself"


def test_torch_requirement_stays_loose():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert "==" not in torch_req and "<" not in torch_req, "a pinned torch would replace Colab's CUDA build"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_pair_in_sync_and_output_free(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `jupytext --sync {source}`"
    nb = nbformat.read(paired, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, \
                f"{paired.name} carries outputs: clear them (jupytext --sync rewrites it output-free)"
    expected = jupytext.read(source)
    got = [(c.cell_type, c.source.strip()) for c in nb.cells]
    want = [(c.cell_type, c.source.strip()) for c in expected.cells]
    assert got == want, f"{paired.name} and {source.name} have drifted: run `jupytext --sync {source}`"


def test_every_notebook_is_paired():
    assert NOTEBOOKS, "no notebooks found"
    for ipynb in (ROOT / "notebooks").glob("*.ipynb"):
        assert ipynb.with_suffix(".py").exists(), f"{ipynb.name} has no .py source"
