"""Generated display names for viewers without an account."""

from __future__ import annotations

import secrets

_ADJECTIVES = ("amber", "brave", "calm", "clever", "dusky", "eager", "fuzzy", "gentle", "happy", "jolly",
               "keen", "lively", "mellow", "nimble", "quiet", "rapid", "sunny", "swift", "tidy", "witty")
_ANIMALS = ("otter", "falcon", "panda", "lynx", "heron", "koala", "badger", "gecko", "walrus", "fox",
            "marten", "ibis", "yak", "puffin", "moose", "quokka", "tapir", "wren", "bison", "newt")


def viewer_name() -> str:
    """e.g. ``swift-otter-42`` (8,000 combinations; names are not identities)."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.randbelow(100)}"
