"""Who may talk to the gRPC server: TLS credentials, bearer tokens, and the client half of both.

The token travels as `authorization: Bearer <token>` (what grpc's own access-token credentials send),
so any gRPC client can be pointed at us. The health service stays open without a token: load balancers
and compose healthchecks probe it and it reveals nothing. Limits for outside callers (concurrency, idle
streams, users per message) are in core.service.admission; `exposure` says in the log who can reach what.
"""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
AUTH_HEADER = "authorization"


def read_bytes(path: Path | str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(cert: Path | str, key: Path | str) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(read_bytes(key), read_bytes(cert))])


def channel_credentials(ca: Path | str | None) -> grpc.ChannelCredentials:
    """Trust `ca` (a CA bundle or the server's self-signed certificate); None trusts the system roots."""
    return grpc.ssl_channel_credentials(root_certificates=read_bytes(ca) if ca else None)


def server_name(cert: Path | str) -> str | None:
    """A name the certificate is valid for, so our own client can verify it when dialling 127.0.0.1.

    The runtime's watcher reaches its server over loopback, but a deployment certificate names the host
    (say `server` in compose). `ssl` has no public parser for a PEM file; the private one has existed
    since Python 3.2 and a missing one only means we dial without an override.
    """
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:
        return None
    try:
        info = decode(str(cert))
    except (OSError, ValueError, ssl.SSLError):
        return None
    names = [value for kind, value in info.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    if not names:
        names = [value for rdn in info.get("subject", ()) for key, value in rdn if key == "commonName"]
    for preferred in ("localhost", "127.0.0.1"):
        if preferred in names:
            return preferred
    return names[0] if names else None


def _token_matches(metadata, expected: bytes) -> bool:
    for key, value in metadata or ():
        if key == AUTH_HEADER:
            given = value.encode() if isinstance(value, str) else value
            # Constant time: a byte-by-byte compare leaks the token's prefix through timing.
            return hmac.compare_digest(given, expected)
    return False


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuse every call without the right bearer token, except the open health service."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES) or _token_matches(handler_call_details.invocation_metadata,
                                                              self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: let grpc answer UNIMPLEMENTED
        return _refusal(handler)


def _deny(_request, context):
    # The same words for a missing and a wrong token: the answer must not help guessing.
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as the real one, so grpc reads the request the same way."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny)
    return grpc.unary_unary_rpc_method_handler(_deny)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details, metadata):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor,
                  grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call. An interceptor rather than call credentials: grpc only sends call
    credentials over TLS, and a token on a trusted plaintext network is a supported setup."""

    def __init__(self, token: str):
        self._pair = (AUTH_HEADER, f"Bearer {token}")

    def _details(self, details):
        return _CallDetails(details, [*(details.metadata or ()), self._pair])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def exposure(settings, grpc_address: str, metrics_address: str | None) -> list[tuple[str, str]]:
    """One log line per listener saying who can reach it and how it is protected (level, text)."""
    from core.config import is_loopback, parse_address

    lines = []
    if grpc_address is None:
        return lines + _metrics_exposure(settings, metrics_address)
    host = parse_address(settings.grpc_listen)[0]
    reach = "this machine only" if is_loopback(host) else "the network"
    guard = ", ".join(g for g in ("TLS" if settings.tls else "", "a bearer token" if settings.token else "") if g)
    if is_loopback(host) or settings.tls:
        level = "info" if settings.token or is_loopback(host) else "warning"
        text = f"exposed: gRPC on {grpc_address} to {reach}, {guard or 'no token'}"
        if level == "warning":
            text += ": anyone who reaches it can push users (set --token)"
        lines.append((level, text))
    else:  # only with --insecure (Settings refuses otherwise)
        lines.append(("warning", f"exposed: gRPC on {grpc_address} to the network in plaintext "
                                 f"({'the token travels in clear' if settings.token else 'unauthenticated'}, "
                                 f"--insecure)"))
    return lines + _metrics_exposure(settings, metrics_address)


def _metrics_exposure(settings, metrics_address: str | None) -> list[tuple[str, str]]:
    from core.config import is_loopback, parse_address

    lines = []
    if metrics_address:
        metrics_host = parse_address(settings.metrics_listen)[0]
        if is_loopback(metrics_host):
            lines.append(("info", f"exposed: metrics on {metrics_address} to this machine only"))
        elif settings.tls:
            lines.append(("info", f"exposed: metrics on {metrics_address} to the network over TLS (no token: "
                                  f"counts only, no user data)"))
        else:
            lines.append(("warning", f"exposed: metrics on {metrics_address} to the network in plaintext "
                                     f"(--insecure; counts only, no user data)"))
    return lines
