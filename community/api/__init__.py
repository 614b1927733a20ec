"""The platform's REST API (``/api/...``): one module per resource, each an :class:`ApiRoutes`
whose operations also make up the OpenAPI 3.1 document (:mod:`community.api.openapi`)."""
