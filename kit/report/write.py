"""`write_report`: both report formats of a run folder, from its files and its interpretation."""
from __future__ import annotations

from pathlib import Path

from kit.interpret.interpretation import Interpretation
from kit.report.data import load_run
from kit.report.html import html_report
from kit.report.markdown import markdown_report


def write_report(run_dir, interpretation: Interpretation | None = None, n_cards: int = 24) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into the run folder; returns their paths. Without an `interpretation`
    (`kit.interpret.interpretation.ensure_interpretation`) the report covers training and samples only."""
    profile = interpretation.profile if interpretation is not None else None
    run = load_run(run_dir, n_cards=n_cards, eval_profile=profile)
    md_path, html_path = run.folder / "report.md", run.folder / "report.html"
    md_path.write_text(markdown_report(run, interpretation), encoding="utf-8")
    html_path.write_text(html_report(run, interpretation), encoding="utf-8")
    return md_path, html_path
