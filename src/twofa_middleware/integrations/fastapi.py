"""FastAPI: the ASGI middleware, with a dependency and an OpenAPI description.

    app = FastAPI(middleware=[..., Middleware(TwoFactorMiddleware.from_env, ...)])

    @app.get("/api/me", responses=TWOFA_401_RESPONSE)
    def me(twofa: TwoFactorInfo = Depends(twofa_decision)): ...

The middleware answers before FastAPI routes, so ``TWOFA_401_RESPONSE`` only
documents in the OpenAPI schema the 401 a protected operation may get.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import HTTPConnection

from ..decision import Reason
from ..errors import ConfigurationError
from ..flow import TwoFactorInfo

CHALLENGE_REASONS: Final = (Reason.NEW_DEVICE, Reason.REAUTH_DUE, Reason.NEW_IP, Reason.IP_EXPIRED)

__all__ = ["TWOFA_401_RESPONSE", "TwoFactorInfo", "twofa_decision"]


def twofa_decision(connection: HTTPConnection) -> TwoFactorInfo:
    """A FastAPI dependency: what the middleware decided for this request.

    Anonymous and exempt requests get an info with no decision. The middleware
    sets ``scope["twofa"]`` on every request it lets through, so its absence means
    the middleware is missing: a configuration error, never a silent pass.
    """
    info = connection.scope.get("twofa")
    if not isinstance(info, TwoFactorInfo):
        raise ConfigurationError(
            "twofa_decision needs TwoFactorMiddleware around the app (scope['twofa'] is unset)"
        )
    return info


TWOFA_401_RESPONSE: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        "description": (
            "A second factor is due (two-factor authentication). Browsers navigating "
            "with GET/HEAD get a 303 to `challenge_url` instead."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["error", "reason", "challenge_url"],
                    "properties": {
                        "error": {"type": "string", "enum": ["two_factor_required"]},
                        "reason": {
                            "type": "string",
                            "enum": [r.value for r in CHALLENGE_REASONS],
                        },
                        "challenge_url": {"type": "string", "example": "/_2fa/challenge?next=%2F"},
                    },
                },
                "example": {
                    "error": "two_factor_required",
                    "reason": "new_device",
                    "challenge_url": "/_2fa/challenge?next=%2Fapi%2Fme",
                },
            }
        },
    }
}
