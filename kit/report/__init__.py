"""The run report: the data both formats read (`data`), `report.md` (`markdown`) and a self-contained
`report.html` with no scripts (`html`).

May import everything up to `kit.view`.
"""
