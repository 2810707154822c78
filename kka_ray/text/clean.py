"""Stage 2 cleaning: raw language-model output -> candidate anomaly descriptions, each rejected line with a reason.

A line that restates a normal class, or reads almost like a normal description, would become a normal image
labelled as an anomaly (METHOD.md, stage 2), so both are dropped; every drop is kept for the record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from pydantic import Field, field_validator, model_validator

from kka_ray.config import Strict
from kka_ray.text.encoder import SentenceEncoder
from kka_ray.text.synonyms import SYNONYMS

MALFORMED = "malformed"
EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
RESTATES_NORMAL = "restates_normal_class"
SIMILAR_TO_NORMAL = "similar_to_normal"
PREAMBLE = "preamble"
TRUNCATED = "truncated"
REASONS = (MALFORMED, EMPTY, PREAMBLE, TOO_SHORT, TOO_LONG, TRUNCATED, DUPLICATE, RESTATES_NORMAL, SIMILAR_TO_NORMAL)
# Chat models introduce their lists ("Here are five new sentences:"): such a line describes nothing.
_PREAMBLE = re.compile(r"(:\s*$)|^(here (are|is)|sure\b|certainly\b|of course\b)", re.IGNORECASE)


class CleanConfig(Strict):
    min_words: int = Field(3, ge=1, description="A sentence with fewer words is rejected as too_short")
    max_words: int = Field(30, ge=1, description="A sentence with more words is rejected as too_long")
    max_chars: int = Field(200, ge=1, description="A sentence with more characters is rejected as too_long")
    similarity_threshold: float | None = Field(
        0.9, ge=-1.0, le=1.0,
        description="MiniLM cosine to any normal description at or above which a sentence is rejected as "
        "similar_to_normal; None disables the check (and the encoder). 0.9: \"a photo of a t-shirt\" (0.84 to "
        "\"a photo of a shirt\") is a real anomaly and must pass",
    )
    drop_truncated: bool = Field(True, description="Reject the last line of a completion that hit the token "
                                 "limit (it stops mid-sentence)")
    extra_synonyms: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Class name -> more words that restate it, added to the built-in table (kka_ray.text.synonyms)",
    )

    @field_validator("extra_synonyms")
    @classmethod
    def _no_blank_words(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        # A blank term would match every sentence and reject them all.
        for name, words in v.items():
            if any(not w.strip() for w in words):
                raise ValueError(f"blank synonym for class {name!r}")
        return v

    @model_validator(mode="after")
    def _word_range(self) -> CleanConfig:
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) is below min_words ({self.min_words})")
        return self


# A sentence ends at . ! ? (possibly inside a closing quote) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’»])\s+")
_BOLD = re.compile(r"(\*\*|__)(.+?)\1")
# "1." / "1)" / "(1)" only before a space, so "3.5 inch heels" keeps its number.
_LIST_MARKER = re.compile(r"^(?:\(?\d+[.)](?=\s|$)|[-*•·–—]+)\s*")
# Leading labels: "Sentence 1:", "Output:", "Item 3:".
_LABEL = re.compile(
    r"^(?:(?:new\s+)?(?:sentence|example|output|answer|description|caption|response)\s*#?\d*|[a-z]+\s*#?\d+)\s*:\s*",
    re.IGNORECASE,
)
# A quoted sentence, the final punctuation possibly outside the closing quote; the body holds no double quote.
_QUOTED = re.compile(r"[\"“«'‘]([^\"“”«»]*)[\"”»'’]([.!?]?)")
_DOUBLE_QUOTES = "\"“”«»"


def _unquote(s: str) -> str:
    quoted = _QUOTED.fullmatch(s)
    if quoted:
        return quoted[1].strip() + quoted[2]
    # An orphan double quote is what the sentence split left of a pair; single quotes may be apostrophes and stay.
    return s.strip(_DOUBLE_QUOTES) if sum(map(s.count, _DOUBLE_QUOTES)) == 1 else s


def _tidy(piece: str) -> str:
    s = _BOLD.sub(r"\2", piece)
    previous = None
    while s != previous:  # wrappers nest in any order: '1. "**Sentence 1:** ..."'
        previous = s
        s = _LIST_MARKER.sub("", s.strip(" \t*"))
        s = _LABEL.sub("", s)
        s = _unquote(s)
    return " ".join(s.split())


def split_sentences(text: str) -> list[str]:
    """Sentences of a model output: split on line breaks and sentence ends, list and quote wrappers removed."""
    pieces = (p for line in text.splitlines() for p in _SENTENCE_END.split(line))
    return [s for s in map(_tidy, pieces) if s]


def line_key(sentence: str) -> str:
    """Duplicate key: case-folded, every run of punctuation and whitespace made one space."""
    return re.sub(r"[\W_]+", " ", sentence.casefold()).strip()


@lru_cache(maxsize=4096)
def _term_pattern(term: str) -> re.Pattern[str]:
    # "t-shirt" = "t shirt" = "tshirt"; an -s / -es plural ("shirts", "dresses") restates the class too.
    parts = (re.escape(p) for p in re.split(r"[-\s]+", term.strip()) if p)
    return re.compile(r"(?<!\w)" + r"[-\s]?".join(parts) + r"(?:e?s)?(?!\w)", re.IGNORECASE)


def _terms(names: Iterable[str], synonyms: Mapping[str, Sequence[str]]) -> list[str]:
    return [t for name in names for t in (name, *synonyms.get(name, ())) if t.strip()]


@lru_cache(maxsize=256)
def _masks(normal: tuple[str, ...], others: tuple[str, ...]) -> tuple[str, ...]:
    """Other-class phrases that contain a normal term, longest first so a phrase is masked before its parts."""
    normal_keys = {line_key(t) for t in normal}
    found = (o for o in others if line_key(o) not in normal_keys and any(_term_pattern(t).search(o) for t in normal))
    return tuple(sorted(found, key=len, reverse=True))


def restates_class(
    sentence: str, normal_names: Sequence[str], other_names: Sequence[str], synonyms: Mapping[str, Sequence[str]]
) -> bool:
    """Whether the sentence names a normal class or a synonym as a whole word (case-insensitive, plurals too).

    Other classes' names and synonyms that contain a normal term are masked first, so with "shirt" normal and
    "t-shirt" another class, "a t-shirt" is not a restatement while "a striped shirt" is. A phrase listed for both
    a normal and another class counts as normal.
    """
    normal = _terms(normal_names, synonyms)
    for phrase in _masks(tuple(normal), tuple(_terms(other_names, synonyms))):
        sentence = _term_pattern(phrase).sub(" ", sentence)
    return any(_term_pattern(t).search(sentence) for t in normal)


def _shape_reason(sentence: str, cfg: CleanConfig) -> str | None:
    n_words = len(sentence.split())
    if not line_key(sentence):
        return EMPTY
    if _PREAMBLE.search(sentence):
        return PREAMBLE
    if n_words < cfg.min_words:
        return TOO_SHORT
    if n_words > cfg.max_words or len(sentence) > cfg.max_chars:
        return TOO_LONG
    return None


def _similar_to_normal(
    sentences: list[str], normal_descriptions: Sequence[str], threshold: float, encoder: SentenceEncoder
) -> set[str]:
    """Sentences whose cosine to some normal description reaches the threshold; all encoded in one call."""
    unique = list(dict.fromkeys(sentences))
    cosines = encoder.encode(unique) @ encoder.encode(list(normal_descriptions)).T
    return {s for s, c in zip(unique, cosines.max(axis=1), strict=True) if c >= threshold}


def _unpack(row: Any) -> tuple[dict[str, Any], str | None]:
    """Provenance (every key but the raw text) and the text; None when the row cannot be used."""
    if not isinstance(row, Mapping):
        return {}, None
    provenance = {k: v for k, v in row.items() if k != "text"}
    text = row.get("text")
    return provenance, text if isinstance(text, str) and "row_id" in row else None


def clean(
    raw_rows: Iterable[Mapping[str, Any]],
    normal_names: Sequence[str],
    other_names: Sequence[str],
    normal_descriptions: Sequence[str],
    cfg: CleanConfig,
    encoder: SentenceEncoder | None = None,
    kept_keys: set[str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kept and rejected lines of `clean_lines`, both in input order; kept lines carry no "reason"."""
    lines = clean_lines(raw_rows, normal_names, other_names, normal_descriptions, cfg, encoder, kept_keys)
    kept, rejected = [line for line in lines if not line["reason"]], [line for line in lines if line["reason"]]
    for line in kept:
        del line["reason"]
    return kept, rejected


def clean_lines(
    raw_rows: Iterable[Mapping[str, Any]],
    normal_names: Sequence[str],
    other_names: Sequence[str],
    normal_descriptions: Sequence[str],
    cfg: CleanConfig,
    encoder: SentenceEncoder | None = None,
    kept_keys: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Every line in input order: the row's provenance + "line" (its index in the row) + "sentence" + "reason"
    ("" when kept).

    Rules, first match wins: malformed (not a mapping, no row_id, text not a string), empty (no sentence, or one
    without a letter or digit), preamble (a list's introduction: ends with ":" or opens "Here are"), too_short,
    too_long, truncated (the last line of a row flagged `truncated`), duplicate (line_key of a line already kept
    in this call or in `kept_keys`), restates_normal_class,
    similar_to_normal. Without an encoder the offline MiniLM is loaded when the similarity rule is on.
    """
    synonyms = {name: [*SYNONYMS.get(name, ()), *cfg.extra_synonyms.get(name, ())]
                for name in {*normal_names, *other_names}}
    lines: list[tuple[dict[str, Any], str, str | None]] = []  # provenance, sentence, reason decided so far
    for row in raw_rows:
        provenance, text = _unpack(row)
        sentences = split_sentences(text) if text is not None else []
        if not sentences:
            lines.append(({**provenance, "line": 0}, "", MALFORMED if text is None else EMPTY))
        reasons = [_shape_reason(s, cfg) for s in sentences]
        if cfg.drop_truncated and sentences and provenance.get("truncated") and reasons[-1] is None:
            reasons[-1] = TRUNCATED  # generation hit its token limit: the last line stops mid-sentence
        # `line`: the sentence's place in its completion, so that a completion can be read back whole
        lines.extend(zip([{**provenance, "line": i} for i in range(len(sentences))], sentences, reasons,
                         strict=True))

    candidates = [s for _, s, reason in lines if reason is None]
    too_similar: set[str] = set()
    if cfg.similarity_threshold is not None and candidates and normal_descriptions:
        too_similar = _similar_to_normal(candidates, normal_descriptions, cfg.similarity_threshold,
                                         encoder or SentenceEncoder())

    out: list[dict[str, Any]] = []
    kept_keys = set() if kept_keys is None else kept_keys  # a caller's set carries duplicates across calls
    for provenance, sentence, reason in lines:
        if reason is None:
            if line_key(sentence) in kept_keys:
                reason = DUPLICATE
            elif restates_class(sentence, normal_names, other_names, synonyms):
                reason = RESTATES_NORMAL
            elif sentence in too_similar:
                reason = SIMILAR_TO_NORMAL
        if reason is None:
            kept_keys.add(line_key(sentence))
        out.append({**provenance, "sentence": sentence, "reason": reason or ""})
    return out


# Rules judged after the duplicate rule: a line they rejected, like a kept one, may be a later copy of a kept line.
_AFTER_DUPLICATE = ("", RESTATES_NORMAL, SIMILAR_TO_NORMAL)


def drop_later_copies(row_ids: Sequence[int], sentences: Sequence[str], reasons: Sequence[str]) -> list[str]:
    """The reasons of lines given in generation order (row_id ascending, a row's lines in their order), with every
    copy of a kept line from a later row made a duplicate.

    A streaming cleaner judges rows in arrival order: a later copy may have been kept, or rejected by a rule after
    the duplicate rule, before the row of the first copy arrived. If the cleaner held back only copies of lines
    kept in earlier rows, the result of this pass is that of one `clean_lines` call on all rows in row_id order.
    """
    keys = [line_key(s) for s in sentences]
    first_row: dict[str, int] = {}
    for key, row, reason in zip(keys, row_ids, reasons, strict=True):
        if reason == "":
            first_row.setdefault(key, row)
    return [DUPLICATE if reason in _AFTER_DUPLICATE and first_row.get(key, row) < row else reason
            for key, row, reason in zip(keys, row_ids, reasons, strict=True)]
