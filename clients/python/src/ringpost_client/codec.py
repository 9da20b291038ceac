"""Encoding of client frames and verified decoding of server frames.

A frame here is one FlatBuffers ``Frame`` without a length prefix: the TCP transport adds and
strips the u32 LE prefix, a WebSocket binary message carries exactly one frame.
"""

from dataclasses import dataclass
from typing import Tuple, Union

import flatbuffers

from . import ringpost_generated as fb
from .errors import ProtocolError
from .verify import verify_frame

Body = fb.Body
EntryKind = fb.EntryKind

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


@dataclass(frozen=True)
class GroupCreate:
    request_id: int
    group_id: str
    members: Tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupAdd:
    request_id: int
    group_id: str
    members: Tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupRemove:
    request_id: int
    group_id: str
    members: Tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupLeave:
    request_id: int
    group_id: str


@dataclass(frozen=True)
class GroupList:
    request_id: int


@dataclass(frozen=True)
class GroupInfo:
    request_id: int
    group_id: str
    after: str = ""
    limit: int = 0


@dataclass(frozen=True)
class GroupSend:
    client_msg_id: int
    group_id: str
    body: bytes = b""


ClientMsg = Union[Login, Send, Ack, Ping, Logout, GroupCreate, GroupAdd, GroupRemove, GroupLeave, GroupList, GroupInfo,
                  GroupSend]

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
    #: Own-send sync: the seq of the send's copy in the sender's own stream, which the broker
    #: does not send to this connection (0: none skipped; see schema/ringpost.fbs SendAck).
    own_seq: int = 0


@dataclass(frozen=True)
class Deliver:
    """One entry of the user's stream: a message to them, one they sent, or a group event."""

    seq: int
    from_user: str
    client_msg_id: int
    sent_at_ms: int
    body: bytes
    group_id: str = ""
    group_seq: int = 0
    kind: int = EntryKind.Message
    outgoing: bool = False
    to_user: str = ""
    members: Tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupMember:
    user_id: str
    admin: bool = False


@dataclass(frozen=True)
class GroupReply:
    request_id: int
    status: int
    group_id: str = ""
    group_seq: int = 0
    groups: Tuple[str, ...] = ()
    members: Tuple[GroupMember, ...] = ()
    next_after: str = ""
    member_count: int = 0
    message: str = ""


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


ServerMsg = Union[LoginOk, SendAck, Deliver, GroupReply, Pong, Error, GoAway, Unknown]

#: Field slots of each server body table, in schema order (schema/ringpost.fbs).
_SERVER_BODIES = {
    Body.LoginOk: ("string", 2, 8, 4, 8, 1),
    Body.SendAck: (8, 2, 8),
    Body.Deliver: (8, "string", 8, 8, "bytes", "string", 8, 1, 1, "string", "strings"),
    Body.GroupReply: (8, 2, "string", 8, "strings", ("string", 1), "string", 4, "string"),
    Body.Pong: (8,),
    Body.Error: (2, "string"),
    Body.GoAway: (2, "string"),
}
_CLIENT_TAGS = {
    getattr(Body, name): name
    for name in ("Login", "Send", "Ack", "Ping", "Logout", "GroupCreate", "GroupAdd", "GroupRemove", "GroupLeave",
                 "GroupList", "GroupInfo", "GroupSend")
}

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


def _strings(b: flatbuffers.Builder, items, start) -> int:
    """A vector of strings (``start`` is the table's StartXxxVector function)."""
    offsets = [b.CreateString(m) for m in items]
    start(b, len(offsets))
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _size_hint(msg) -> int:
    if isinstance(msg, Send):
        return len(msg.body) + len(msg.to_user) * 4
    if isinstance(msg, GroupSend):
        return len(msg.body) + len(msg.group_id) * 4
    if isinstance(msg, (GroupCreate, GroupAdd, GroupRemove)):
        return len(msg.group_id) * 4 + sum(8 + len(m) * 4 for m in msg.members)
    return 0


_MEMBER_OPS = {
    GroupCreate: (Body.GroupCreate, fb.GroupCreateStart, fb.GroupCreateAddRequestId, fb.GroupCreateAddGroupId,
                  fb.GroupCreateAddMembers, fb.GroupCreateStartMembersVector, fb.GroupCreateEnd),
    GroupAdd: (Body.GroupAdd, fb.GroupAddStart, fb.GroupAddAddRequestId, fb.GroupAddAddGroupId, fb.GroupAddAddMembers,
               fb.GroupAddStartMembersVector, fb.GroupAddEnd),
    GroupRemove: (Body.GroupRemove, fb.GroupRemoveStart, fb.GroupRemoveAddRequestId, fb.GroupRemoveAddGroupId,
                  fb.GroupRemoveAddMembers, fb.GroupRemoveStartMembersVector, fb.GroupRemoveEnd),
}


def encode_client(msg: ClientMsg) -> bytes:
    """Encodes one client frame (no length prefix)."""
    b = flatbuffers.Builder(64 + _size_hint(msg))
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
    if type(msg) in _MEMBER_OPS:
        tag, start, add_id, add_group, add_members, start_vec, end = _MEMBER_OPS[type(msg)]
        group = b.CreateString(msg.group_id)
        members = _strings(b, msg.members, start_vec)
        start(b)
        add_id(b, _u64(msg.request_id, "request_id"))
        add_group(b, group)
        add_members(b, members)
        return _finish(b, tag, end(b))
    if isinstance(msg, GroupLeave):
        group = b.CreateString(msg.group_id)
        fb.GroupLeaveStart(b)
        fb.GroupLeaveAddRequestId(b, _u64(msg.request_id, "request_id"))
        fb.GroupLeaveAddGroupId(b, group)
        return _finish(b, Body.GroupLeave, fb.GroupLeaveEnd(b))
    if isinstance(msg, GroupList):
        fb.GroupListStart(b)
        fb.GroupListAddRequestId(b, _u64(msg.request_id, "request_id"))
        return _finish(b, Body.GroupList, fb.GroupListEnd(b))
    if isinstance(msg, GroupInfo):
        if not isinstance(msg.limit, int) or not 0 <= msg.limit <= 0xFFFFFFFF:
            raise ValueError(f"limit {msg.limit!r} is not a u32")
        group = b.CreateString(msg.group_id)
        after = b.CreateString(msg.after)
        fb.GroupInfoStart(b)
        fb.GroupInfoAddRequestId(b, _u64(msg.request_id, "request_id"))
        fb.GroupInfoAddGroupId(b, group)
        fb.GroupInfoAddAfter(b, after)
        fb.GroupInfoAddLimit(b, msg.limit)
        return _finish(b, Body.GroupInfo, fb.GroupInfoEnd(b))
    if isinstance(msg, GroupSend):
        group = b.CreateString(msg.group_id)
        body = b.CreateByteVector(bytes(msg.body))
        fb.GroupSendStart(b)
        fb.GroupSendAddClientMsgId(b, _u64(msg.client_msg_id, "client_msg_id"))
        fb.GroupSendAddGroupId(b, group)
        fb.GroupSendAddBody(b, body)
        return _finish(b, Body.GroupSend, fb.GroupSendEnd(b))
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
        fb.SendAckAddOwnSeq(b, msg.own_seq)
        return _finish(b, Body.SendAck, fb.SendAckEnd(b))
    if isinstance(msg, Deliver):
        frm = b.CreateString(msg.from_user)
        body = b.CreateByteVector(bytes(msg.body))
        group = b.CreateString(msg.group_id) if msg.group_id else None
        to = b.CreateString(msg.to_user) if msg.to_user else None
        members = _strings(b, msg.members, fb.DeliverStartMembersVector) if msg.members else None
        fb.DeliverStart(b)
        fb.DeliverAddSeq(b, msg.seq)
        fb.DeliverAddFromUser(b, frm)
        fb.DeliverAddClientMsgId(b, msg.client_msg_id)
        fb.DeliverAddSentAtMs(b, msg.sent_at_ms)
        fb.DeliverAddBody(b, body)
        if group is not None:
            fb.DeliverAddGroupId(b, group)
        fb.DeliverAddGroupSeq(b, msg.group_seq)
        fb.DeliverAddKind(b, msg.kind)
        fb.DeliverAddOutgoing(b, msg.outgoing)
        if to is not None:
            fb.DeliverAddToUser(b, to)
        if members is not None:
            fb.DeliverAddMembers(b, members)
        return _finish(b, Body.Deliver, fb.DeliverEnd(b))
    if isinstance(msg, GroupReply):
        group = b.CreateString(msg.group_id)
        groups = _strings(b, msg.groups, fb.GroupReplyStartGroupsVector) if msg.groups else None
        member_offsets = []
        for m in msg.members:
            uid = b.CreateString(m.user_id)
            fb.GroupMemberStart(b)
            fb.GroupMemberAddUserId(b, uid)
            fb.GroupMemberAddAdmin(b, m.admin)
            member_offsets.append(fb.GroupMemberEnd(b))
        members = None
        if member_offsets:
            fb.GroupReplyStartMembersVector(b, len(member_offsets))
            for o in reversed(member_offsets):
                b.PrependUOffsetTRelative(o)
            members = b.EndVector()
        nxt = b.CreateString(msg.next_after)
        text = b.CreateString(msg.message)
        fb.GroupReplyStart(b)
        fb.GroupReplyAddRequestId(b, msg.request_id)
        fb.GroupReplyAddStatus(b, msg.status)
        fb.GroupReplyAddGroupId(b, group)
        fb.GroupReplyAddGroupSeq(b, msg.group_seq)
        if groups is not None:
            fb.GroupReplyAddGroups(b, groups)
        if members is not None:
            fb.GroupReplyAddMembers(b, members)
        fb.GroupReplyAddNextAfter(b, nxt)
        fb.GroupReplyAddMemberCount(b, msg.member_count)
        fb.GroupReplyAddMessage(b, text)
        return _finish(b, Body.GroupReply, fb.GroupReplyEnd(b))
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
        return SendAck(m.ClientMsgId(), m.Status(), m.OwnSeq())
    if tag == Body.Deliver:
        m = fb.Deliver()
        m.Init(table.Bytes, table.Pos)
        return Deliver(m.Seq(), _text(m.FromUser()), m.ClientMsgId(), m.SentAtMs(), _body(m._tab, 12),
                       _text(m.GroupId()), m.GroupSeq(), m.Kind(), bool(m.Outgoing()), _text(m.ToUser()),
                       tuple(_text(m.Members(i)) for i in range(m.MembersLength())))
    if tag == Body.GroupReply:
        m = fb.GroupReply()
        m.Init(table.Bytes, table.Pos)
        members = []
        for i in range(m.MembersLength()):
            gm = m.Members(i)
            members.append(GroupMember(_text(gm.UserId()), bool(gm.Admin())))
        return GroupReply(m.RequestId(), m.Status(), _text(m.GroupId()), m.GroupSeq(),
                          tuple(_text(m.Groups(i)) for i in range(m.GroupsLength())), tuple(members),
                          _text(m.NextAfter()), m.MemberCount(), _text(m.Message()))
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
