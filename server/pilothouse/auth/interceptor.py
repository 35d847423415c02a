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
    for path in ("name", "config.name", "session_id"):
        value: Any = request
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, str) and value:
            return value
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates with `chain` and authorizes with `policy`; `server`
    names this server in the audit log."""

    def __init__(self, chain: AuthChain, policy: MethodPolicy, server: str = "") -> None:
        self.chain = chain
        self.policy = policy
        self.server = server

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        admin = method in self.policy.admin_methods
        if handler.response_streaming:
            return wrap_server_method_handler(lambda b: self._streaming(b, method), handler)
        return wrap_server_method_handler(lambda b: self._unary(b, method, admin), handler)

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        """The caller's principal, or the call aborted (audited)."""
        call = CallCredentials.of(context)
        try:
            principal = await self.chain.authenticate(call)
        except AuthRefused as refused:
            self._refused(method, call, None, refused.error, refused.detail)
            await context.abort_with_status(status_of(refused.error))
            raise  # not reached: abort raises
        except PilothouseError as error:  # e.g. the JWKS cannot be fetched yet
            self._refused(method, call, None, error, error.message)
            await context.abort_with_status(status_of(error))
            raise
        if not self.policy.allows(principal, method):
            error = permission_denied()
            self._refused(method, call, principal, error, "the method needs another role")
            await context.abort_with_status(status_of(error))
        return principal

    def _refused(
        self,
        method: str,
        call: CallCredentials,
        principal: Principal | None,
        error: PilothouseError,
        detail: str,
    ) -> None:
        audit(
            "call.refused", principal, server=self.server, method=method, peer=call.peer,
            code=status_code_of(error).name, reason=error.reason, detail=detail,
        )

    def _unary(self, behavior: Callable[..., Any], method: str, admin: bool):
        async def authenticated(request_or_iterator, context):
            principal = await self._admit(method, context)
            token = set_principal(principal)
            try:
                if not admin:
                    return await behavior(request_or_iterator, context)
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


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    try:
        code = context.code()
    except Exception:  # older grpcio without ServicerContext.code()
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    return default
