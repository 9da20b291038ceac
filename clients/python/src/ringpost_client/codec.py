"""Encoding of client frames and verified decoding of server frames.

A frame here is one FlatBuffers ``Frame`` without a length prefix: the TCP transport adds and
strips the u32 LE prefix, a WebSocket binary message carries exactly one frame.
"""

from dataclasses import dataclass
from typing import Union

import flatbuffers

from . import ringpost_generated as fb
from .errors import ProtocolError
from .verify import verify_frame

Body = fb.Body

# ---- client -> server -----------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    token: str
    device_id: str = ""
    last_seq: int = 0


@dataclass(frozen=True)
class Send:
    client_msg_id: int
    to_user: str
    body: bytes = b""


@dataclass(frozen=True)
class Ack:
    up_to_seq: int


@dataclass(frozen=True)
class Ping:
    nonce: int


@dataclass(frozen=True)
class Logout:
    pass


ClientMsg = Union[Login, Send, Ack, Ping, Logout]

# ---- server -> client -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoginOk:
    user_id: str
    shard: int
    head_seq: int
    heartbeat_ms: int
    oldest_seq: int
    gap: bool


@dataclass(frozen=True)
class SendAck:
    client_msg_id: int
    status: int


@dataclass(frozen=True)
class Deliver:
    seq: int
    from_user: str
    client_msg_id: int
    sent_at_ms: int
    body: bytes


@dataclass(frozen=True)
class Pong:
    nonce: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class GoAway:
    code: int
    reason: str


@dataclass(frozen=True)
class Unknown:
    """A frame type newer than this build (clients ignore it, per the schema's rules)."""

    tag: int


ServerMsg = Union[LoginOk, SendAck, Deliver, Pong, Error, GoAway, Unknown]

#: Field slots of each server body table, in schema order (schema/ringpost.fbs).
_SERVER_BODIES = {
    Body.LoginOk: ("string", 2, 8, 4, 8, 1),
    Body.SendAck: (8, 2),
    Body.Deliver: (8, "string", 8, 8, "bytes"),
    Body.Pong: (8,),
    Body.Error: (2, "string"),
    Body.GoAway: (2, "string"),
}
_CLIENT_TAGS = {Body.Login: "Login", Body.Send: "Send", Body.Ack: "Ack", Body.Ping: "Ping", Body.Logout: "Logout"}

_U64_MAX = (1 << 64) - 1


def _u64(v: int, what: str) -> int:
    if not isinstance(v, int) or v < 0 or v > _U64_MAX:
        raise ValueError(f"{what} {v!r} is not a u64")
    return v


def _finish(b: flatbuffers.Builder, tag: int, body: int) -> bytes:
    fb.FrameStart(b)
    fb.FrameAddBodyType(b, tag)
    fb.FrameAddBody(b, body)
    b.Finish(fb.FrameEnd(b))
    return bytes(b.Output())


def encode_client(msg: ClientMsg) -> bytes:
    """Encodes one client frame (no length prefix)."""
    b = flatbuffers.Builder(64 + (len(msg.body) + len(msg.to_user) * 4 if isinstance(msg, Send) else 0))
    if isinstance(msg, Login):
        token = b.CreateString(msg.token)
        device = b.CreateString(msg.device_id)
        fb.LoginStart(b)
        fb.LoginAddToken(b, token)
        fb.LoginAddDeviceId(b, device)
        fb.LoginAddLastSeq(b, _u64(msg.last_seq, "last_seq"))
        return _finish(b, Body.Login, fb.LoginEnd(b))
    if isinstance(msg, Send):
        to = b.CreateString(msg.to_user)
        body = b.CreateByteVector(bytes(msg.body))
        fb.SendStart(b)
        fb.SendAddClientMsgId(b, _u64(msg.client_msg_id, "client_msg_id"))
        fb.SendAddToUser(b, to)
        fb.SendAddBody(b, body)
        return _finish(b, Body.Send, fb.SendEnd(b))
    if isinstance(msg, Ack):
        fb.AckStart(b)
        fb.AckAddUpToSeq(b, _u64(msg.up_to_seq, "up_to_seq"))
        return _finish(b, Body.Ack, fb.AckEnd(b))
    if isinstance(msg, Ping):
        fb.PingStart(b)
        fb.PingAddNonce(b, _u64(msg.nonce, "nonce"))
        return _finish(b, Body.Ping, fb.PingEnd(b))
    if isinstance(msg, Logout):
        fb.LogoutStart(b)
        return _finish(b, Body.Logout, fb.LogoutEnd(b))
    raise TypeError(f"not a client message: {msg!r}")


def encode_server(msg: ServerMsg) -> bytes:
    """Encodes one server frame (no length prefix); tests and tools use it to play a broker."""
    b = flatbuffers.Builder(64 + (len(msg.body) if isinstance(msg, Deliver) else 0))
    if isinstance(msg, LoginOk):
        user = b.CreateString(msg.user_id)
        fb.LoginOkStart(b)
        fb.LoginOkAddUserId(b, user)
        fb.LoginOkAddShard(b, msg.shard)
        fb.LoginOkAddHeadSeq(b, msg.head_seq)
        fb.LoginOkAddHeartbeatMs(b, msg.heartbeat_ms)
        fb.LoginOkAddOldestSeq(b, msg.oldest_seq)
        fb.LoginOkAddGap(b, msg.gap)
        return _finish(b, Body.LoginOk, fb.LoginOkEnd(b))
    if isinstance(msg, SendAck):
        fb.SendAckStart(b)
        fb.SendAckAddClientMsgId(b, msg.client_msg_id)
        fb.SendAckAddStatus(b, msg.status)
        return _finish(b, Body.SendAck, fb.SendAckEnd(b))
    if isinstance(msg, Deliver):
        frm = b.CreateString(msg.from_user)
        body = b.CreateByteVector(bytes(msg.body))
        fb.DeliverStart(b)
        fb.DeliverAddSeq(b, msg.seq)
        fb.DeliverAddFromUser(b, frm)
        fb.DeliverAddClientMsgId(b, msg.client_msg_id)
        fb.DeliverAddSentAtMs(b, msg.sent_at_ms)
        fb.DeliverAddBody(b, body)
        return _finish(b, Body.Deliver, fb.DeliverEnd(b))
    if isinstance(msg, Pong):
        fb.PongStart(b)
        fb.PongAddNonce(b, msg.nonce)
        return _finish(b, Body.Pong, fb.PongEnd(b))
    if isinstance(msg, (Error, GoAway)):
        text = b.CreateString(msg.message if isinstance(msg, Error) else msg.reason)
        if isinstance(msg, Error):
            fb.ErrorStart(b)
            fb.ErrorAddCode(b, msg.code)
            fb.ErrorAddMessage(b, text)
            return _finish(b, Body.Error, fb.ErrorEnd(b))
        fb.GoAwayStart(b)
        fb.GoAwayAddCode(b, msg.code)
        fb.GoAwayAddReason(b, text)
        return _finish(b, Body.GoAway, fb.GoAwayEnd(b))
    raise TypeError(f"not a server message: {msg!r}")


def _text(raw) -> str:
    if raw is None:
        return ""
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"malformed frame: invalid UTF-8 in a string ({e})") from None


def _body(t, slot_offset: int) -> bytes:
    o = t.Offset(slot_offset)
    if o == 0:
        return b""
    start = t.Vector(o)
    return bytes(t.Bytes[start : start + t.VectorLen(o)])


def decode_server(data: bytes) -> ServerMsg:
    """Decodes one server frame (no length prefix); raises ProtocolError for anything invalid."""
    data = bytes(data)
    tag = verify_frame(data, _SERVER_BODIES)
    if tag == Body.NONE:
        raise ProtocolError("malformed frame: missing frame body")
    if tag in _CLIENT_TAGS:
        raise ProtocolError(f"unexpected frame type {_CLIENT_TAGS[tag]} from the server")
    if tag not in _SERVER_BODIES:
        return Unknown(tag)
    frame = fb.Frame.GetRootAs(data, 0)
    table = frame.Body()
    if tag == Body.LoginOk:
        m = fb.LoginOk()
        m.Init(table.Bytes, table.Pos)
        return LoginOk(_text(m.UserId()), m.Shard(), m.HeadSeq(), m.HeartbeatMs(), m.OldestSeq(), bool(m.Gap()))
    if tag == Body.SendAck:
        m = fb.SendAck()
        m.Init(table.Bytes, table.Pos)
        return SendAck(m.ClientMsgId(), m.Status())
    if tag == Body.Deliver:
        m = fb.Deliver()
        m.Init(table.Bytes, table.Pos)
        return Deliver(m.Seq(), _text(m.FromUser()), m.ClientMsgId(), m.SentAtMs(), _body(m._tab, 12))
    if tag == Body.Pong:
        m = fb.Pong()
        m.Init(table.Bytes, table.Pos)
        return Pong(m.Nonce())
    if tag == Body.Error:
        m = fb.Error()
        m.Init(table.Bytes, table.Pos)
        return Error(m.Code(), _text(m.Message()))
    m = fb.GoAway()
    m.Init(table.Bytes, table.Pos)
    return GoAway(m.Code(), _text(m.Reason()))
