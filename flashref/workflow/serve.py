"""Serve a trained checkpoint over HTTP: the seed article's "deploy the model, provide an API".

    POST /generate   {"input": "3 1 4", "beam_width": 1, "max_length": null}
                     -> {"output": "4 1 3", "tokens": [...], "finished": true, ...}
    GET  /health     -> {"status": "ok"}
    GET  /model      -> config, parameter count, checkpoint file and SHA-256, limits

`input` is text in the task's vocabulary (digits 0-9, separated by spaces or not);
`beam_width` 1 decodes greedily, 2..MAX_BEAM_WIDTH runs beam search and also returns every
hypothesis with its log-probability; `max_length` bounds the generated tokens (the end token
included), null = the decoder's default (input length + 8), both capped by the model's
positional table (max_len - 1). Decoding uses the KV cache (`flashref.workflow.decoding`).

Every bad request gets a 4xx JSON body `{"error": "<what was wrong>", ...}`: 422 for a body
that is not JSON, a missing or mistyped field, an unknown token, a width or length out of
range; 404/405 as usual. An unexpected failure answers 500 `{"error": ...}` and the server
keeps serving.

Concurrency: FastAPI runs the (synchronous) endpoint in a thread pool. Decoding is not
thread-safe: `inference()` flips the model's train/eval mode and the autograd's global
no-grad flag, so one request finishing could re-enable graph recording under another.
One lock serialises decoding; requests are answered correctly, one model pass at a time
(the NumPy model is single-threaded anyway).
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint's annotations at
# definition time, and the request model is local to create_app (fastapi is an optional extra).
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .checkpoint import load_checkpoint
from .data import EOS, decode_tokens, encode_digits, source_ids
from .decoding import beam_search, greedy_decode

MAX_BEAM_WIDTH = 16  # bounds one request's work: a beam step costs beam_width decoder rows
MAX_INPUT_CHARS = 1000  # longer bodies cannot be valid inputs for any max_len we train


class RequestError(ValueError):
    """A request the server refuses: answered 422 with this message."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Generator:
    """A loaded checkpoint plus a lock: `generate` may be called from many threads."""

    def __init__(self, checkpoint_path):
        self.path = Path(checkpoint_path)
        checkpoint = load_checkpoint(self.path)  # verified: format, version, tensor checksum
        self.model, self.config, self.extra = checkpoint.model, checkpoint.config, checkpoint.extra
        self.model.eval()
        self.sha256 = file_sha256(self.path)
        self.num_parameters = int(sum(p.data.size for p in self.model.parameters()))
        self.max_length = self.config.max_len - 1  # BOS + generated tokens fit the positional table
        self.max_input_digits = self.config.max_len - 1  # digits + EOS fit the positional table
        self.lock = threading.Lock()

    def describe(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "parameters": self.num_parameters,
            "checkpoint": {"path": str(self.path), "sha256": self.sha256, "bytes": self.path.stat().st_size},
            "task": self.extra.get("task"),
            "vocabulary": "digits 0-9, separated by spaces",
            "limits": {"max_input_digits": self.max_input_digits, "max_beam_width": MAX_BEAM_WIDTH,
                       "max_length": self.max_length},
            "decoding": "KV cache",
        }

    def check(self, text: str, beam_width: int, max_length: int | None) -> np.ndarray:
        """Validate one request -> source ids (S,); RequestError names what is wrong."""
        try:
            digits = encode_digits(text)
        except ValueError as err:
            raise RequestError(str(err)) from None
        if len(digits) > self.max_input_digits:
            raise RequestError(f"input: {len(digits)} digits, this model takes at most {self.max_input_digits}")
        if not 1 <= beam_width <= MAX_BEAM_WIDTH:
            raise RequestError(f"beam_width: expected an integer in [1, {MAX_BEAM_WIDTH}], got {beam_width}")
        if max_length is not None and not 1 <= max_length <= self.max_length:
            raise RequestError(f"max_length: expected null or an integer in [1, {self.max_length}], got {max_length}")
        return np.array(source_ids(digits), dtype=np.int64)

    def generate(self, text: str, beam_width: int = 1, max_length: int | None = None) -> dict:
        src = self.check(text, beam_width, max_length)
        with self.lock:  # see the module docstring: decoding flips shared state
            start = time.perf_counter()  # decoding only, not the wait for the lock
            if beam_width == 1:
                tokens = greedy_decode(self.model, src[None], max_new_tokens=max_length)[0]
                hypotheses = None
            else:
                ranked = beam_search(self.model, src, beam_size=beam_width, max_new_tokens=max_length)
                tokens = list(ranked[0].tokens)
                hypotheses = [{"output": decode_tokens(h.tokens), "log_prob": h.log_prob, "finished": h.finished}
                              for h in ranked]
            seconds = time.perf_counter() - start
        answer = {
            "input": decode_tokens(src),
            "output": decode_tokens(tokens),
            "finished": bool(tokens and tokens[-1] == EOS),  # False: max_length ran out first
            "generated_tokens": len(tokens),
            "beam_width": beam_width,
            "decode_ms": round(seconds * 1e3, 3),
        }
        if hypotheses is not None:
            answer["hypotheses"] = hypotheses
        return answer


def create_app(generator: Generator):
    """The FastAPI application around `generator`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        input: StrictStr = Field(max_length=MAX_INPUT_CHARS, description='digits, e.g. "3 1 4"')
        beam_width: StrictInt = Field(1, description=f"1 = greedy; up to {MAX_BEAM_WIDTH}")
        max_length: Optional[StrictInt] = Field(None, description="most generated tokens (end token included)")

    app = FastAPI(title="flashref", description="The NumPy Transformer trained on the reversal task, served.")

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        problems = []
        for error in exc.errors():
            loc = tuple(error.get("loc", ()))
            if error.get("type") == "json_invalid":
                problems.append(f"body: not valid JSON ({error.get('ctx', {}).get('error', 'decode error')} "
                                f"at character {loc[-1] if len(loc) > 1 else '?'})")
            elif loc == ("body",):  # no body, or not a JSON object
                hint = "" if "json" in content_type else " sent as Content-Type: application/json"
                problems.append(f'body: expected a JSON object like {{"input": "3 1 4"}}{hint}')
            else:
                where = ".".join(str(part) for part in loc if part != "body") or "body"
                problems.append(f"{where}: {error.get('msg')}")
        return JSONResponse(status_code=422, content={"error": "invalid request: " + "; ".join(problems)})

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return JSONResponse(status_code=422, content={"error": str(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)},
                            headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def unexpected(request: Request, call_next):
        # Caught here, inside Starlette's ServerErrorMiddleware: an exception handler for
        # Exception answers the 500 but then re-raises, and uvicorn closes the connection, so a
        # client reusing it for its next request could get "connection reset" (seen in CI).
        try:
            return await call_next(request)
        except Exception as exc:
            logging.getLogger("flashref.serve").exception("unexpected failure on %s", request.url.path)
            return JSONResponse(status_code=500, content={"error": f"internal error: {type(exc).__name__}"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model_info() -> dict:
        return generator.describe()

    @app.post("/generate")
    def generate(request: GenerateRequest) -> dict:  # sync: runs in FastAPI's thread pool
        return generator.generate(request.input, request.beam_width, request.max_length)

    return app
