"""GET /v1/openapi.yaml: the OpenAPI document of the member, till and callback API
(streams/static/openapi.yaml, shipped inside the package), public. Read once at import, so
a package without it fails at start rather than on the first request;
tests/unit/test_openapi.py keeps it equal to the routes."""

from __future__ import annotations

from pathlib import Path

from faust.web import Request, Response, View

from streams.app import app

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "static" / "openapi.yaml"
DOCUMENT = DOCUMENT_PATH.read_bytes()


@app.page("/v1/openapi.yaml")
class OpenAPIDocument(View):
    async def get(self, request: Request) -> Response:
        return self.bytes(DOCUMENT, content_type="application/yaml")
