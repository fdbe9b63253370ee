"""The run report: the data both formats read (`data`), `report.md` (`markdown`) and a self-contained
`report.html` with no scripts of its own (`html`); and a sweep's page (`sweep`: sweep.md and sweep.html, whose one
small script opens a point's report when its marker is clicked).

May import everything up to `kit.view`.
"""
