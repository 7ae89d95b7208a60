"""Token authentication, TLS and request guarding for ``mixtera-server``.

With a token, every call must carry the metadata ``authorization: Bearer <token>``; any
other call is refused with ``UNAUTHENTICATED`` before its handler runs, so it changes
nothing. The comparison takes constant time. TLS uses a PEM certificate chain and key.

:class:`GuardInterceptor` puts the token check in front of every Mixtera call, answers a
request whose bytes are not a valid message of its type with ``INVALID_ARGUMENT`` (instead of
gRPC's ``INTERNAL``), and logs every refusal with its reason and the peer. The standard
health service (``grpc.health.v1.Health``) needs no token: it tells only whether the server
is up, and probes (load balancers, Kubernetes) do not carry one.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from typing import Any

import grpc

from ..errors import MixteraError

DENIED = "missing or wrong token: send the metadata 'authorization: Bearer <token>' (MixteraClient.remote(..., token=...))"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
log = logging.getLogger("mixtera.server")


def log_refusal(method: str, context: Any, code: grpc.StatusCode, message: str) -> None:
    """The server log's line for a refused call: method, status, peer and reason."""
    try:
        peer = context.peer()
    except Exception:  # pragma: no cover - a context without a peer
        peer = "?"
    level = logging.WARNING if code in _LOUD else logging.INFO
    log.log(level, "%s refused (%s) for %s: %s", method, code.name, peer, message[:500])


_LOUD = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


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


def _deny_for(method: str, streaming: bool) -> Callable[..., Any]:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        log_refusal(method, context, grpc.StatusCode.UNAUTHENTICATED, DENIED)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    def deny_stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        deny(request_or_iterator, context)
        yield  # pragma: no cover - abort raises

    return deny_stream if streaming else deny


class _Undecodable:
    """What a request's bytes parse to when they are not a message of the method's type."""

    def __init__(self, error: str) -> None:
        self.error = error


def _safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:
            return _Undecodable(f"{type(e).__name__}: {e}")

    return parse


def _checked(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            message = f"the request is not a valid message for {method} ({request.error[:200]})"
            log_refusal(method, context, grpc.StatusCode.INVALID_ARGUMENT, message)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return behavior(request, context)

    return handle


class GuardInterceptor(grpc.ServerInterceptor):
    """The token check (``token``: None for none), well-formed requests, refusals logged.

    Health calls pass through untouched (no token needed); see the module documentation."""

    def __init__(self, token: str | None = None) -> None:
        if token is not None and not token:
            raise ValueError("the token must not be empty")
        self._expected = None if token is None else f"Bearer {token}".encode()

    def _authorized(self, metadata: Any) -> bool:
        if self._expected is None:
            return True
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
        method = str(getattr(handler_call_details, "method", "") or "")
        handler = continuation(handler_call_details)
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        name = method.rsplit("/", 1)[-1] or method
        kwargs = {
            "request_deserializer": _safe_deserializer(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if not self._authorized(handler_call_details.invocation_metadata):  # type: ignore[attr-defined]
            deny = _deny_for(name, handler.response_streaming)
            if handler.request_streaming and handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
            if handler.request_streaming:
                return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
            if handler.response_streaming:
                return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
            return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
        if handler.request_streaming:  # no such Mixtera method; left as it is
            return handler
        if handler.response_streaming:
            assert handler.unary_stream is not None
            return grpc.unary_stream_rpc_method_handler(_checked(handler.unary_stream, name), **kwargs)
        assert handler.unary_unary is not None
        return grpc.unary_unary_rpc_method_handler(_checked(handler.unary_unary, name), **kwargs)


class TokenAuthInterceptor(GuardInterceptor):
    """Refuses every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        super().__init__(token)
