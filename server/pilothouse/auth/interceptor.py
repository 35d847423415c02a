"""The authentication and authorization interceptor of both servers.

For every call but health checks and reflection it resolves the caller's
`Principal` (`AuthChain`), checks the method against the `MethodPolicy`,
and runs the handler with the principal in a context variable
(`current_principal()`). Refusals are UNAUTHENTICATED or PERMISSION_DENIED
with an ErrorInfo that says nothing a guesser could use, and a line in the
audit log saying why; admin methods are audited with their outcome.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc
from grpc.experimental import wrap_server_method_handler

from pilothouse.auth.audit import audit
from pilothouse.auth.chain import AuthChain, AuthRefused, permission_denied
from pilothouse.auth.credentials import CallCredentials
from pilothouse.auth.policy import MethodPolicy, is_open
from pilothouse.auth.principal import Principal, reset_principal, set_principal
from pilothouse.errors import PilothouseError
from pilothouse.rpc.errors import status_code_of, status_of


def _target(request: Any) -> str:
    """The object a request acts on, for the audit log."""
    for path in ("name", "config.name", "agent.config.name", "session_id"):
        value: Any = request
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, str) and value:
            return value
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates with `chain` and authorizes with `policy`; `server`
    names this server in the audit log.

    When the credentials are all in the metadata (every mode but `mtls`),
    the principal is resolved before the handler is chosen and set in the
    call's context there (grpc.aio runs the interceptors and the handler in
    the call's own task), so an admitted call's handler runs unwrapped: no
    cost per streamed message. `mtls` needs the TLS peer, which only the
    handler's ServicerContext has: the handler is wrapped then."""

    def __init__(self, chain: AuthChain, policy: MethodPolicy, server: str = "") -> None:
        self.chain = chain
        self.policy = policy
        self.server = server
        self._needs_transport = "mtls" in chain.names

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        admin = method in self.policy.admin_methods
        if self._needs_transport:
            if handler.response_streaming:
                return wrap_server_method_handler(lambda b: self._streaming(b, method), handler)
            return wrap_server_method_handler(lambda b: self._unary(b, method, admin), handler)
        call = CallCredentials.from_metadata(handler_call_details.invocation_metadata)
        try:
            principal = await self._principal(method, call)
        except _Refusal as refusal:
            return self._refusing(handler, method, refusal)
        set_principal(principal)  # the call's own context: seen by its handler only
        if admin:
            return wrap_server_method_handler(lambda b: self._audited(b, method, principal), handler)
        return handler

    async def _principal(self, method: str, call: CallCredentials) -> Principal:
        """The admitted principal; raises _Refusal."""
        try:
            principal = await self.chain.authenticate(call)
        except AuthRefused as refused:
            raise _Refusal(None, refused.error, refused.detail) from None
        except PilothouseError as error:  # e.g. the JWKS cannot be fetched yet
            raise _Refusal(None, error, error.message) from None
        if not self.policy.allows(principal, method):
            raise _Refusal(principal, permission_denied(), "the method needs another role")
        return principal

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        """The caller's principal (from the metadata and the TLS peer), or
        the call aborted (audited)."""
        try:
            return await self._principal(method, CallCredentials.of(context))
        except _Refusal as refusal:
            await self._refuse(method, context, refusal)
            raise  # not reached: abort raises

    async def _refuse(self, method: str, context, refusal: _Refusal) -> None:
        error = refusal.error
        audit(
            "call.refused", refusal.principal, server=self.server, method=method,
            peer=context.peer(), code=status_code_of(error).name, reason=error.reason,
            detail=refusal.detail,
        )
        await context.abort_with_status(status_of(error))

    def _refusing(self, handler, method: str, refusal: _Refusal):
        """A handler in place of `handler` that refuses the call."""
        if handler.response_streaming:

            def streaming(behavior):
                async def refuse(request_or_iterator, context):
                    await self._refuse(method, context, refusal)
                    yield  # not reached: an async generator, as grpc expects here

                return refuse

            return wrap_server_method_handler(streaming, handler)

        def unary(behavior):
            async def refuse(request_or_iterator, context):
                await self._refuse(method, context, refusal)

            return refuse

        return wrap_server_method_handler(unary, handler)

    def _audited(self, behavior: Callable[..., Any], method: str, principal: Principal):
        """An admin method's behavior, audited with its outcome."""

        async def audited(request_or_iterator, context):
            code = "OK"
            try:
                return await behavior(request_or_iterator, context)
            except BaseException:
                code = _code_name(context, "CANCELLED")
                raise
            finally:
                audit(
                    "admin.action", principal, server=self.server, method=method,
                    peer=context.peer(), code=code, target=_target(request_or_iterator),
                )

        return audited

    def _unary(self, behavior: Callable[..., Any], method: str, admin: bool):
        async def authenticated(request_or_iterator, context):
            principal = await self._admit(method, context)
            token = set_principal(principal)
            try:
                if admin:
                    return await self._audited(behavior, method, principal)(
                        request_or_iterator, context
                    )
                return await behavior(request_or_iterator, context)
            finally:
                reset_principal(token)

        return authenticated

    def _streaming(self, behavior: Callable[..., Any], method: str):
        async def authenticated(request_or_iterator, context):
            # The call is its own task: the principal set here is seen by
            # the handler's every step and by nothing else.
            set_principal(await self._admit(method, context))
            result = behavior(request_or_iterator, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:  # a handler that writes with context.write
                await result

        return authenticated


class _Refusal(Exception):
    def __init__(self, principal: Principal | None, error: PilothouseError, detail: str) -> None:
        super().__init__(detail)
        self.principal = principal
        self.error = error
        self.detail = detail


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    try:
        code = context.code()
    except Exception:  # older grpcio without ServicerContext.code()
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    return default
