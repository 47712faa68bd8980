"""The OpenAPI 3 document served at /openapi.json."""

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "async-mail-service", "version": "0.1.0"},
    "paths": {},
}
