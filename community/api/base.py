"""Declaring API operations once: aiohttp route, request validation and OpenAPI entry.

An operation is declared with :meth:`ApiRoutes.op`::

    routes = ApiRoutes("users")

    @routes.op("POST", "/api/users/register", body=RegisterIn, responses={201: UserOut, 409: None},
               summary="Create an account", auth="none")
    async def register(call: Call[RegisterIn, None]) -> tuple[int, UserOut]:
        ...

* ``body``/``query``: pydantic models.  Bodies are validated in strict JSON mode (a string
  is never taken for a boolean or a number).  A body must be ``application/json`` (415 else), at
  most :data:`MAX_BODY_BYTES` (413), valid JSON (400) and valid against the model (422 with
  the pydantic errors as ``errors``).  Query parameters are validated the same way (400).
* ``auth``: ``"none"``, ``"optional"`` or ``"user"`` (401 without a valid access token; 403
  for a suspended account is the auth middleware's) or ``"admin"`` (403 unless admin).
* The handler returns a model (200), ``(status, model)``, ``(status, None)`` (no body) or
  an aiohttp response.  Errors are :class:`common.problems.HttpProblem` (RFC 9457).
* ``responses`` lists every status the operation can answer besides the ones every
  operation gets (400/413/415/422 for bodies, 401/403 for auth, 429); the OpenAPI document
  and the schemathesis test hold the handler to it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.http_body import parse_json, read_body
from common.problems import HttpProblem

MAX_BODY_BYTES = 64 * 1024

B = TypeVar("B", bound=BaseModel | None)
Q = TypeVar("Q", bound=BaseModel | None)
Auth = Literal["none", "optional", "user", "admin"]

PRINCIPAL_KEY = "principal"
"""``request[PRINCIPAL_KEY]``: the :class:`Principal` the auth middleware found, or absent."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a logged-in user (from a Bearer access token or the pages' cookie).

    :ivar via: ``"bearer"`` or ``"cookie"`` (cookie requests that change state need CSRF).
    """

    user_id: str
    username: str
    role: str = "viewer"
    via: str = "bearer"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass
class Call(Generic[B, Q]):
    """One validated request: the aiohttp request, its body and query models, the caller."""

    request: web.Request
    body: B
    query: Q
    principal: Principal | None

    @property
    def user(self) -> Principal:
        """The caller; only operations declared ``auth="user"``/``"admin"`` may rely on it."""
        assert self.principal is not None
        return self.principal

    def path(self, name: str) -> str:
        return self.request.match_info[name]


Handler = Callable[[Call[Any, Any]], Awaitable[Any]]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    auth: Auth = "none"
    description: str = ""
    operation_id: str = ""


def problem_from_validation(exc: ValidationError, status: int, where: str) -> HttpProblem:
    """A pydantic error as problem+json: ``errors`` = ``[{"loc", "msg", "type"}]`` (no input echo)."""
    errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid"}
    loc = ".".join(first["loc"]) or where
    return HttpProblem(status, None, f"{where}: {loc}: {first['msg']}", errors=errors)


async def read_json(request: web.Request) -> Any:
    """The JSON body: 415 unless ``application/json``, 413 over the cap, 400 if malformed
    (nested too deep included: :mod:`common.http_body`)."""
    if request.content_type != "application/json":
        raise HttpProblem(415, None, "send the body as application/json",
                          headers={"Accept": "application/json"})
    raw = await read_body(request, MAX_BODY_BYTES, "request bodies")
    return parse_json(raw, "the body is not valid UTF-8 JSON")


def _query_dict(request: web.Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        out[key] = values if len(values) > 1 else values[0]
    return out


def json_response(status: int, model: BaseModel | None, headers: dict[str, str] | None = None) -> web.Response:
    if model is None:
        return web.Response(status=status, headers=headers)
    # bytes, not str: aiohttp wraps a str body in a payload object (~15 % of a small request's CPU)
    return web.Response(status=status, body=model.model_dump_json().encode(), content_type="application/json",
                        headers=headers)


class ApiRoutes:
    """The operations of one API module (``tag`` groups them in the OpenAPI document)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.operations: list[Operation] = []

    def op(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: dict[int, type[BaseModel] | None],
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        auth: Auth = "none",
        description: str = "",
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(method.upper(), path, handler, summary, self.tag, body, query,
                                             dict(responses), auth, description or (handler.__doc__ or "").strip(),
                                             handler.__name__))
            return handler

        return register

    def routes(self) -> list[web.RouteDef]:
        return [web.route(op.method, op.path, _wrap(op)) for op in self.operations]


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal: Principal | None = request.get(PRINCIPAL_KEY)
        if op.auth in ("user", "admin") and principal is None:
            raise HttpProblem(401, None, "log in first: send 'Authorization: Bearer <access token>'",
                              headers={"WWW-Authenticate": 'Bearer realm="relaycast"'})
        if op.auth == "admin" and principal is not None and not principal.is_admin:
            raise HttpProblem(403, None, "this operation needs an admin account")
        query = None
        if op.query is not None:
            try:
                query = op.query.model_validate(_query_dict(request))
            except ValidationError as exc:
                raise problem_from_validation(exc, 400, "query") from None
        body = None
        if op.body is not None:
            raw = await read_json(request)
            try:
                # Strict: a JSON string is not a boolean or a number (no "yes" for true).
                body = op.body.model_validate_json(json.dumps(raw), strict=True)
            except ValidationError as exc:
                raise problem_from_validation(exc, 422, "body") from None
        result = await op.handler(Call(request, body, query, principal))
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, tuple):
            status, model = result
            return json_response(status, model)
        return json_response(200, result)

    handle.__name__ = op.operation_id
    return handle
