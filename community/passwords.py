"""Password hashing: argon2id (RFC 9106) through argon2-cffi.

Parameters: RFC 9106 §4's second recommended option, "if much less memory is available":
argon2id, t = 3 passes, m = 64 MiB, p = 4 lanes, 16-byte salt, 32-byte tag (argon2-cffi's
``RFC_9106_LOW_MEMORY`` profile).  Measured on the 2-core development machine: ~98 ms per
hash or verify (docs/accounts.md has the command).  Hashes run in a worker thread
(:func:`asyncio.to_thread`; argon2-cffi releases the GIL), at most :data:`MAX_CONCURRENT`
at once so a burst of logins holds at most that many × 64 MiB and never blocks the event
loop.  A hash made with other parameters is upgraded on the next successful login
(:func:`needs_rehash`).

Unknown accounts cost the same as wrong passwords: :func:`verify_password` with
``stored=None`` verifies against a dummy hash of the same parameters.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY

HASHER = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)
"""argon2id t=3, m=65536 KiB, p=4 (RFC 9106 §4)."""

MIN_LENGTH = 10
MAX_LENGTH = 256
MAX_CONCURRENT = 2
"""Hashes computed at the same time per process (each holds 64 MiB while it runs)."""

_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
_DUMMY = (
    "$argon2id$v=19$m=65536,t=3,p=4$1gf0P91QuJNUyIP+PDD2WQ$"
    "ctboPYSWeyaX9uUO1sBcWvzwR16xxb/afwpqNimQTNE"
)
"""A hash of a discarded random password, with :data:`HASHER`'s parameters: what unknown
accounts are verified against (recomputed once if the parameters change)."""
_dummy: str | None = None


def _semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(MAX_CONCURRENT)
    return slots


async def hash_password(password: str) -> str:
    """The argon2id PHC string of ``password`` (``$argon2id$v=19$m=65536,t=3,p=4$...``)."""
    async with _semaphore():
        return await asyncio.to_thread(HASHER.hash, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def _dummy_hash() -> str:
    global _dummy
    if _dummy is None:
        _dummy = (
            _DUMMY
            if not HASHER.check_needs_rehash(_DUMMY)
            else await hash_password(secrets.token_urlsafe(24))
        )
    return _dummy


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches the PHC string ``stored``.

    ``stored=None`` (no such account) or an unusable hash (not argon2) verifies against a
    dummy hash and returns False, taking as long as a wrong password does.
    """
    if stored is None or not stored.startswith("$argon2"):
        dummy = await _dummy_hash()
        async with _semaphore():
            await asyncio.to_thread(_verify, dummy, password)
        return False
    async with _semaphore():
        return await asyncio.to_thread(_verify, stored, password)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than :data:`HASHER`'s."""
    try:
        return HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
