"""Keyset cursors: only cursors the API returned are accepted; anything else is a 400."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp.test_utils import TestClient

from common.problems import HttpProblem
from community.api.pagination import decode_cursor
from community.tokens import tokens_of
from tests.community.platform_app import community_of, make_user


def _cursor(at: object, row_id: object) -> str:
    return base64.urlsafe_b64encode(json.dumps([at, row_id]).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "", "%%%", _cursor("2026-01-01T00:00:00+00:00", "a\x00b"), _cursor("2026-01-01T00:00:00", "abc"),
    _cursor("yesterday", "abc"), _cursor("2026-01-01T00:00:00+00:00", 7), _cursor("2026-01-01T00:00:00+00:00", "x" * 65),
    base64.urlsafe_b64encode(b"[1,2,3]").decode(),
])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(HttpProblem) as exc:
        decode_cursor(cursor)
    assert exc.value.status == 400


async def test_a_crafted_cursor_is_a_400_on_every_database(db_client: TestClient) -> None:
    user = await make_user(community_of(db_client), "reader")
    token, _ = await tokens_of(db_client.server.app).issue_access(user)
    crafted = _cursor("2026-01-01T00:00:00+00:00", "id\x00with-nul")
    for path in ("/api/users/me/following", "/api/notifications"):
        resp = await db_client.get(path, params={"cursor": crafted}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 400, await resp.text()
        assert resp.content_type == "application/problem+json"
