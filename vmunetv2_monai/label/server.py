"""ASGI entry point: MONAI Label's FastAPI app with 4xx answers where MONAI Label 0.8.5 answers 500.

Use it with ``monailabel start_server ... --uvicorn_app vmunetv2_monai.label.server:app``, with this package's app
or with the stock ``monaibundle`` app. Handlers are added at import, before the server starts (FastAPI builds its
middleware once):

- a label ``tag`` that is not a plain name (``/datastore/...?tag=../../x``) -> 400 before MONAI Label sees it (its
  local datastore makes the tag a folder name: the stock server writes or deletes a label outside the studies);
- malformed JSON in a form field such as ``params`` -> 400 (MONAI Label parses it in the endpoint);
- ``ImageNotFoundException`` / ``LabelNotFoundException`` -> 404;
- ``MONAILabelException`` with ``INVALID_INPUT`` -> 400, any other -> 500 with its message instead of a bare
  "Internal Server Error".
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from monailabel.app import app
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

__all__ = ["app"]

logger = logging.getLogger(__name__)

_TAG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@app.middleware("http")
async def _plain_label_tags(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    tag = request.query_params.get("tag")
    if request.url.path.startswith("/datastore") and tag is not None and not _TAG.match(tag):
        logger.warning("%s %s: refused label tag %r", request.method, request.url.path, tag)
        detail = f"label tag must be letters, digits, '_' or '-': {tag!r}"
        return JSONResponse(status_code=400, content={"detail": detail})
    return await call_next(request)


@app.exception_handler(json.JSONDecodeError)
async def _malformed_json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
    logger.warning("%s %s: malformed JSON: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=400, content={"detail": f"malformed JSON in a form field (e.g. params): {exc}"})


@app.exception_handler(MONAILabelException)
async def _monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
        status = 404
    elif exc.error == MONAILabelError.INVALID_INPUT:
        status = 400
    else:
        status = 500
    logger.log(
        logging.WARNING if status < 500 else logging.ERROR, "%s %s: %s", request.method, request.url.path, exc.msg
    )
    return JSONResponse(status_code=status, content={"detail": str(exc.msg), "error": exc.error.value})
