"""The OpenAPI document: what FastAPI makes of the routes, plus what the routes cannot say
themselves: every error answer of the API is problem details (RFC 9457, `problems.py`)
rather than FastAPI's own validation error, and a request shows its key as a bearer token.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from iotpipe.api.models import Problem, ValidationProblem
from iotpipe.api.problems import MEDIA_TYPE

ERRORS = (
    "An error, as problem details: 400 a bad parameter, 401 no key or an unknown one, "
    "403 a key that may not, 404 an unknown device, series or item, 409 a conflict, "
    "413 a body too large, 415 a content type not ingested, 429 the key's rate limit "
    "(`Retry-After`), 503 the database unreachable (`Retry-After`)."
)
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key (`iotpipe keys create`); also `Authorization: Token KEY`, "
    "`X-API-Key: KEY`, or HTTP Basic with the key as the password. Not needed while no key exists.",
}


def document(api: FastAPI) -> dict[str, Any]:
    """The API's OpenAPI document, made once."""
    if api.openapi_schema is None:
        schema = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)  # FastAPI's; never answered here
        schemas.pop("ValidationError", None)
        schemas["Problem"] = Problem.model_json_schema()
        schemas["ValidationProblem"] = ValidationProblem.model_json_schema()
        components["securitySchemes"] = {"bearer": BEARER}
        for path, item in schema["paths"].items():
            if path.startswith("/api/"):  # not ThingSpeak's routes, which answer as ThingSpeak
                for operation in item.values():
                    _problems(operation)
        api.openapi_schema = schema
    return api.openapi_schema


def _problems(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    if "422" in responses:
        responses["422"] = _answer(
            "Invalid parameters or body (`errors` says which and why), or, for an ingest request,"
            " no message could be stored (its summary, with `rejections`).",
            "ValidationProblem",
        )
    responses["default"] = _answer(ERRORS, "Problem")
    operation["security"] = [{"bearer": []}]


def _answer(description: str, model: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }
