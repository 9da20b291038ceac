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
    """A Send or GroupSend answered with a non-OK SendAck status (or refused by the client before sending)."""

    def __init__(self, code: int, client_msg_id: int, to: str, detail: str = "", group_id: str = ""):
        self.client_msg_id = client_msg_id
        #: The recipient of a 1:1 send ("" for a group send).
        self.to = to
        #: The group of a group send ("" for a 1:1 send).
        self.group_id = group_id
        target = f"group {group_id!r}" if group_id else repr(to)
        super().__init__(code, detail or f"send #{client_msg_id} to {target} was not accepted")


class GroupError(RingpostError):
    """A group operation answered by a GroupReply with a non-OK status (GROUP_EXISTS 601, NOT_A_MEMBER 602, ...)."""

    def __init__(self, code: int, request_id: int, op: str, group_id: str, detail: str = ""):
        self.request_id = request_id
        #: "create", "add", "remove", "leave", "list" or "info".
        self.op = op
        self.group_id = group_id
        super().__init__(code, detail or f"group {op} {group_id!r} was refused")


class ConnectionLost(Exception):
    """The network path failed: connect refused, connection lost, login or ping timed out."""


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame for this side."""


class ClientClosed(Exception):
    """The client was closed (close(), logout, permanent refusal) before the operation finished."""
