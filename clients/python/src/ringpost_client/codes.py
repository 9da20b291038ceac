"""Stable wire codes (``schema/ringpost.fbs`` ``enum Code``) and how the client treats them."""

from .ringpost_generated import Code

#: value -> name, built from the generated class so new codes appear with a regeneration.
_NAMES = {v: k for k, v in vars(Code).items() if not k.startswith("_") and isinstance(v, int)}


def code_name(code: int) -> str:
    """Readable name of a code, e.g. ``"AUTH_FAILED"``; ``"UNKNOWN"`` for one this build does not know."""
    return _NAMES.get(code, "UNKNOWN")


# Reconnecting cannot help after these: a bad token, a frame the broker will refuse again,
# another connection took over this device, or the user logged out. Every other code
# (SHUTDOWN, IDLE_TIMEOUT, SLOW_CONSUMER, TOO_MANY_DEVICES, INTERNAL, newer codes) is retried.
PERMANENT = frozenset(
    {
        Code.AUTH_FAILED,
        Code.TOKEN_EXPIRED,
        Code.NOT_LOGGED_IN,
        Code.ALREADY_LOGGED_IN,
        Code.FRAME_TOO_LARGE,
        Code.MALFORMED_FRAME,
        Code.UNKNOWN_FRAME,
        Code.UNEXPECTED_FRAME,
        Code.SESSION_REPLACED,
        Code.LOGGED_OUT,
    }
)


def is_permanent(code: int) -> bool:
    """True when a refusal with this code stops reconnecting."""
    return code in PERMANENT
