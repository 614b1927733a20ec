"""The admin audit log: every admin action, who did it, to what, when and why.

An entry is written in the same transaction as the action it records, so the log holds
exactly the actions that took effect.  Actions are dotted names: ``user.suspend``,
``user.unsuspend``, ``stream.takedown``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuditEntry


async def record(
    session: AsyncSession,
    actor_id: str | None,
    action: str,
    target_type: str,
    target_id: str,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an audit entry to ``session`` (the caller's transaction commits it).

    :param actor_id: the admin's user id (``None``: the system).
    :param action: e.g. ``"user.suspend"`` (≤ 48 characters).
    :param target_type: e.g. ``"user"``, ``"stream"`` (≤ 24 characters).
    :param target_id: the target's id (≤ 64 characters).
    :param reason: the admin's words (cut to 500 characters).
    :param detail: JSON-safe facts worth keeping (e.g. the username at that time).
    """
    entry = AuditEntry(
        actor_id=actor_id,
        action=action[:48],
        target_type=target_type[:24],
        target_id=target_id[:64],
        reason=reason[:500],
        detail=dict(detail or {}),
    )
    session.add(entry)
    return entry
