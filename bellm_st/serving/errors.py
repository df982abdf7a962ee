"""OpenAI-style error bodies, and the handlers that give every failure one.

Clients written for the OpenAI API read ``{"error": {"message", "type", "param", "code"}}``, so
every answer that is not a success has that shape: our own checks, FastAPI's request validation,
unknown routes, and (only for real server faults) 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bellm_st.inputs import preview

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
MAX_VALIDATION_ERRORS_SHOWN = 3


class APIError(StarletteHTTPException):
    """A failure the server answers with ``status`` and an OpenAI-style body.

    An HTTP exception, so FastAPI lets it through unchanged even when it is raised while the body
    is being read (the payload-size guard does that).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body OpenAI clients parse into their error classes."""
    error_type = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _field_path(location: tuple[Any, ...]) -> str:
    """``("body", "input", 3)`` -> ``input[3]``: the way the request body names the field."""
    path = ""
    for part in location[1:] if location and location[0] == "body" else location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
                   bool: "a boolean", type(None): "null"}


def json_type_name(value: Any) -> str:
    """How a JSON client calls the type of a parsed value (``null``, ``an array``...)."""
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


EXAMPLE_BODY = '{"input": ["my sentence"], "model": "any"}'


def _describe(error: dict[str, Any]) -> str:
    kind = error.get("type")
    path = _field_path(tuple(error.get("loc", ())))
    if kind == "json_invalid":
        context = error.get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({context}); send a JSON object such as {EXAMPLE_BODY}"
    if not path and kind == "missing":
        return f"the request has no body; send a JSON object such as {EXAMPLE_BODY}"
    if not path and isinstance(error.get("input"), bytes):
        return "the body was not read as JSON; send it with the header 'Content-Type: application/json'"
    if not path:
        got = json_type_name(error.get("input"))
        return f"the request body must be a JSON object such as {EXAMPLE_BODY}, got {got}"
    if kind == "extra_forbidden":
        return f"{path} is not a parameter of this endpoint; remove it (see /docs for the parameters)"
    if kind == "missing":
        return f"{path} is required"
    return f"{path}: {error.get('msg', 'invalid')} (got {preview(error.get('input'))})"


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable sentence (and the first bad field) from FastAPI/pydantic validation errors."""
    parts = [_describe(error) for error in errors[:MAX_VALIDATION_ERRORS_SHOWN]]
    if len(errors) > MAX_VALIDATION_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_VALIDATION_ERRORS_SHOWN} more problem(s)")
    first = errors[0] if errors else {}
    param = None if first.get("type") == "json_invalid" else _field_path(tuple(first.get("loc", ())))
    return "; ".join(parts) or "invalid request", param or None


async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return error_response(error.status, error.message, error.param, error.code, error.headers)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    message, param = describe_validation_errors(list(error.errors()))
    return error_response(400, message, param, "invalid_request")


def _not_found_message(request: Request) -> str:
    path = request.url.path
    without_slash = path.rstrip("/")
    if without_slash != path and any(getattr(route, "path", None) == without_slash for route in request.app.routes):
        return f"no endpoint at {path}; use {without_slash} (without the trailing slash)"
    return f"no endpoint at {path}; see /docs for the available ones"


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    # FastAPI's answer to a body it cannot decode: not UTF-8, or JSON nested deeper than the parser goes.
    unparsable = (
        "the request body nests JSON too deeply to parse" if isinstance(error.__cause__, RecursionError)
        else "the request body could not be parsed"
    )
    messages = {
        400: f"{unparsable}; send UTF-8 encoded JSON such as {EXAMPLE_BODY}",
        404: _not_found_message(request),
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    message = messages.get(error.status_code, str(error.detail))
    return error_response(error.status_code, message, headers=getattr(error, "headers", None))


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("internal error while serving %s %s", request.method, request.url.path)
    return error_response(500, "internal server error; the server log has the details", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Give every failure of ``app`` an OpenAI-style body; client mistakes never become 500."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
