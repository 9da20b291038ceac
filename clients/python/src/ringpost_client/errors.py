"""Typed errors. Every error the broker reports carries its stable numeric code and its name."""

from .codes import code_name


class RingpostError(Exception):
    """The broker refused something with a stable code (Error/GoAway frame, login refusal)."""

    def __init__(self, code: int, detail: str = ""):
        self.code = code
        self.code_name = code_name(code)
        self.detail = detail
        text = f"{self.code_name} ({code})"
        super().__init__(f"{text}: {detail}" if detail else text)


class SendError(RingpostError):
    """A Send answered with a non-OK SendAck status (or refused by the client before sending)."""

    def __init__(self, code: int, client_msg_id: int, to: str, detail: str = ""):
        self.client_msg_id = client_msg_id
        self.to = to
        super().__init__(code, detail or f"send #{client_msg_id} to {to!r} was not accepted")


class ConnectionLost(Exception):
    """The network path failed: connect refused, connection lost, login or ping timed out."""


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame for this side."""


class ClientClosed(Exception):
    """The client was closed (close(), logout, permanent refusal) before the operation finished."""
