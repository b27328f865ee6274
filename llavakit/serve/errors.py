"""The API's refusals: an HTTP status and OpenAI's error body ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from llavakit.errors import LlavakitError


class ApiError(LlavakitError):
    """A request the server refuses: HTTP ``status`` + OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)
