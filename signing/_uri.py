"""Showing a signer URI in an error message without what may be a secret in it."""

from __future__ import annotations

import re

__all__ = ["run_together", "shown_uri"]

_ANOTHER_ATTRIBUTE = re.compile(r"[;&][^;&=]*=")

HIDDEN = "..."
"""What stands in an error message for an attribute value (or a whole attribute) that is not shown."""


def shown_uri(uri: str, shown: frozenset[str], path_separator: str | None = None) -> str:
    """``uri`` with the value of every attribute not named in ``shown`` replaced by `HIDDEN`.

    A URI that is refused may hold a secret under a misspelt name (``pin=1234``, ``Passphrase=...``) or with no
    name at all; an error message, which ends up in logs, shows only the values of the attributes it knows
    to hold none. ``path_separator`` splits the part before ``?`` into attributes too (``;`` in ``pkcs11:``);
    without it that part (a file's path) is shown as it is.
    """
    head, question, query = uri.partition("?")
    if path_separator is not None:
        scheme, colon, body = head.partition(":")
        head = scheme + colon + path_separator.join(_shown_item(item, shown) for item in body.split(path_separator))
    if question:
        head += question + "&".join(_shown_item(item, shown) for item in query.split("&"))
    return head


def _shown_item(item: str, shown: frozenset[str]) -> str:
    name, equals, value = item.partition("=")
    if not equals:
        return HIDDEN if item else item
    return item if name in shown and not run_together(value) else f"{name}={HIDDEN}"


def run_together(value: str) -> bool:
    """Whether an attribute's ``value`` runs another attribute into it (``module-path=/m.so;pin=1234``: ``;``
    written between query attributes, or ``&`` between path ones), which may be a secret."""
    return _ANOTHER_ATTRIBUTE.search(value) is not None
