"""Authentication and authorization for both Pilothouse servers.

- `Principal(id, roles, source)` and `current_principal()`: who the
  current call runs as (set by `AuthInterceptor`).
- `build_chain(settings)`: the authenticators PILOTHOUSE_AUTH names
  (`none`, `tokens`, `jwt`, `mtls`, `mesh`), tried in order;
  `check_exposure` refuses a server reachable without authentication.
- `AuthInterceptor`: one grpc.aio server interceptor resolving the
  principal and checking the `MethodPolicy` (`RUNTIME_POLICY`: agent CRUD
  needs `admin`); UNAUTHENTICATED / PERMISSION_DENIED otherwise, audited.
- `LimitsInterceptor` / `PrincipalLimiter`: per-principal limits,
  RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure.
- `python -m pilothouse.auth new-token | hash-token`: tokens-file entries.
"""

from pilothouse.auth.chain import ON_BEHALF_OF, AuthChain, build_chain, check_exposure, on_behalf_of
from pilothouse.auth.interceptor import AuthInterceptor
from pilothouse.auth.limits import Limits, LimitsInterceptor, PrincipalLimiter
from pilothouse.auth.policy import RUNTIME_POLICY, TOOL_EXECUTOR_POLICY, MethodPolicy
from pilothouse.auth.principal import ADMIN, ANONYMOUS, USER, Principal, current_principal

__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "ON_BEHALF_OF",
    "RUNTIME_POLICY",
    "TOOL_EXECUTOR_POLICY",
    "USER",
    "AuthChain",
    "AuthInterceptor",
    "Limits",
    "LimitsInterceptor",
    "MethodPolicy",
    "Principal",
    "PrincipalLimiter",
    "build_chain",
    "check_exposure",
    "current_principal",
    "on_behalf_of",
]
