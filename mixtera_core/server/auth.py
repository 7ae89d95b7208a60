"""Token authentication and TLS for ``mixtera-server``.

With a token, every call must carry the metadata ``authorization: Bearer <token>``; any
other call is refused with ``UNAUTHENTICATED`` before its handler runs, so it changes
nothing. The comparison takes constant time. TLS uses a PEM certificate chain and key.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

import grpc

from ..errors import MixteraError

DENIED = "missing or wrong token: send the metadata 'authorization: Bearer <token>' (MixteraClient.remote(..., token=...))"


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in a file (surrounding whitespace stripped); an empty file is an error."""
    with open(path, encoding="utf-8") as fh:
        token = fh.read().strip()
    if not token:
        raise MixteraError(f"token file {os.fspath(path)} is empty; put the shared secret in it")
    return token


def server_credentials(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> grpc.ServerCredentials:
    """TLS credentials from a PEM certificate (chain) and its PEM private key."""
    with open(cert, "rb") as fh:
        cert_pem = fh.read()
    with open(key, "rb") as fh:
        key_pem = fh.read()
    return grpc.ssl_server_credentials([(key_pem, cert_pem)])


def _deny(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


def _deny_stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
    yield  # pragma: no cover - abort raises


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or self._authorized(handler_call_details.invocation_metadata):  # type: ignore[attr-defined]
            return handler
        # a handler of the same shape whose only effect is the refusal
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_deny_stream, **kwargs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_deny, **kwargs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny_stream, **kwargs)
        return grpc.unary_unary_rpc_method_handler(_deny, **kwargs)
