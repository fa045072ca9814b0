"""Reading the changelists' search box: terms, and ids among them."""

from __future__ import annotations

import uuid

from django.utils.text import smart_split, unescape_string_literal


def as_uuid(text: str) -> uuid.UUID | None:
    """``text`` as a UUID (a record id), or None."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def search_terms(search_term: str) -> list[str]:
    """Whitespace-separated terms, quotes grouping words, as the admin's own search does."""
    terms = []
    for term in smart_split(search_term):
        if term and term[0] in "\"'" and term[0] == term[-1]:
            term = unescape_string_literal(term)
        if term:
            terms.append(term)
    return terms
