"""The web app's page routes (the pages themselves are static files in ``web/static``).

Signaling serves ``/`` (``index.html``: the directory), ``/watch/{channel}``
(``watch.html``: the channel page) and ``/broadcast/{room}``; :func:`setup` adds the
platform's pages, each an HTML file answered with ``Cache-Control: no-cache`` (and the
pages' Content Security Policy, set by signaling's response hook):

==========================  ======================  ================================================
path                        file                    what it shows
==========================  ======================  ================================================
``/category/{slug}``        ``index.html``          the live streams of one category
``/search?q=``              ``index.html``          search results (title, channel, tags, category)
``/studio``                 ``studio.html``         go live, stream info, stream keys, ingest health
``/studio/analytics``       ``analytics.html``      a broadcast's viewers, chat, ingest, QoE
``/moderation/{channel}``   ``moderation.html``     chat moderation: queue, settings, bans, log
``/login``                  ``login.html``          log in
``/register``               ``register.html``       sign up
``/settings``               ``settings.html``       profile and password
``/notifications``          ``notifications.html``  the user's notifications
==========================  ======================  ================================================

A page that needs a login (studio, analytics, moderation, settings, notifications) checks
for it itself (``GET /api/users/me``, then ``POST /api/users/refresh``) and goes to
``/login?next=``.
"""

from __future__ import annotations

from aiohttp import web

from signaling.app import page

PAGES: dict[str, str] = {
    "/category/{slug}": "index.html",
    "/search": "index.html",
    "/studio": "studio.html",
    "/studio/analytics": "analytics.html",
    "/moderation/{channel}": "moderation.html",
    "/login": "login.html",
    "/register": "register.html",
    "/settings": "settings.html",
    "/notifications": "notifications.html",
}
"""Route path → file in ``web/static``."""


def setup(app: web.Application) -> None:
    """Add the :data:`PAGES` routes (GET, and HEAD through aiohttp) to ``app``."""
    app.router.add_routes([web.get(path, page(name)) for path, name in PAGES.items()])
