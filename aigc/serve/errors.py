"""Errors in OpenAI's shape: :class:`APIError` and the app's exception handlers.

Every error the server answers is ``{"error": {"message", "type", "param", "code"}}``
(:func:`aigc.serve.protocol.error_body`) with the matching HTTP status: an
:class:`APIError` as raised, an :class:`~aigc.errors.AigcError` (a setting or prompt the
model refuses) as 400, a body pydantic rejects as 400 naming the field, an unknown route
404, a wrong method 405, anything else 500.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aigc.errors import AigcError
from aigc.serve import protocol as P


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON response of this error (its status, OpenAI's error body, its headers)."""
        return JSONResponse(P.error_body(self.message, self.type, self.param, self.code), self.status,
                            headers=self.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception ``app`` raises in OpenAI's error shape (see the module docstring)."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(AigcError, _aigc_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _aigc_error(request: Request, exc: AigcError) -> JSONResponse:
    return APIError(400, str(exc)).response()


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    if err.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
                        ).response()
    parts = [str(x) for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "extra_forbidden":
        name = ".".join(parts)
        return APIError(400, f"{name!r}: not a field of this request (a misspelling?)", param=name).response()
    # pydantic appends the union member it tried ("prompt.str"): keep the field and list indices
    loc = ".".join(x for x in parts if x.isdigit() or x == parts[0]) if parts else ""
    if not loc:
        return APIError(400, "request body must be a JSON object (with Content-Type: application/json)"
                        ).response()
    return APIError(400, f"{loc or 'body'}: {err.get('msg', 'invalid')}", param=loc or None).response()


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on "
               f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
    return APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None,
                    headers=getattr(exc, "headers", None)).response()


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return APIError(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    "server_error").response()
