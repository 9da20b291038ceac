"""The ringpost client: one logical session over a sequence of connections.

::

    connect() -> dial -> Login{token, device_id, last_seq = last processed seq} -> LoginOk
         ^                                                      | online: re-send unacked sends
         | backoff (equal jitter)                               v
    reconnecting <- connection lost / transient refusal <- Deliver / SendAck / Pong, heartbeats

Every send (1:1 or group) stays pending until its SendAck; a connection lost in between
re-sends it with the same client_msg_id after the next login (the broker's dedup answers with
the original SendAck and does not deliver twice). Deliveries carry a per-user seq; the client
resumes after the last seq the application *processed* (auto_ack: it asked for the next
delivery; otherwise what it passed to ack()) and drops replayed seqs it already handed out on
this instance.

Own-send sync: the broker puts every 1:1 message the user sends into the user's own stream too
(``outgoing``), delivered to the user's *other* devices. The connection that made the send is
not sent that copy: its SendAck names the copy's seq instead (``SendResult.own_seq``), so this
connection's view of the stream has a hole there. The client tolerates it (no gap check; acks
and ``last_seq`` stop before the hole until an entry after it is processed, and the broker's ack
handling covers the copy when the entry before it is acked) and never moves ``last_seq`` over it
from the SendAck alone (the copy may not be durable yet). A login that resumes from before the
copy - a reconnect of this client included - gets it replayed; the client remembers the client_msg_ids it sent (across its own
reconnects) and flags that entry ``echo``, as it does for the group messages it sent (which
still reach it as a member). Echoes go to ``on("echo")`` callbacks and - unless
``deliver_echoes=True`` - are not yielded by the iterator, so an app that shows its sends at
once sees each message once. Group operations are requests answered by a GroupReply with their
request_id; the membership change itself also arrives as a stream entry, in either order.
"""

import asyncio
import collections
import inspect
import random as _random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Deque, Dict, Iterable, List, Optional, Tuple, Union

from . import codec
from .backoff import Backoff
from .codes import Code, code_name, is_permanent
from .codec import EntryKind, GroupMember
from .errors import ClientClosed, ConnectionLost, GroupError, ProtocolError, RingpostError, SendError
from .transport import Dialer, Transport, dialer_for

DEFAULT_MAX_FRAME = 16 * 1024 * 1024  # generous: the broker bounds what it sends itself
DEFAULT_MAX_SEND_FRAME = 64 * 1024  # the broker's default limits.max_frame
DEFAULT_HEARTBEAT = 30.0  # when LoginOk carries no heartbeat_ms
LOGOUT_WAIT = 2.0  # how long logout() waits for GoAway(LOGGED_OUT)
ECHO_MEMORY = 4096  # recent client_msg_ids remembered to recognise own echoes (as the Rust client)
_U64_MASK = (1 << 64) - 1

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]


@dataclass(frozen=True)
class LoginInfo:
    user_id: str
    shard: int
    head_seq: int
    heartbeat_ms: int
    oldest_seq: int
    #: Part of what this device asked for was already removed by retention.
    gap: bool
    #: The last_seq this login sent.
    resumed_from: int
    #: The broker's newest seq is below what this device processed (its data was reset).
    reset: bool


_KIND_NAMES = {v: k for k, v in vars(EntryKind).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class Delivery:
    """One entry of the user's stream: a message to the user (1:1 or in a group), a message the
    user sent (``outgoing``, own-send sync), or a group event (``kind`` other than Message)."""

    seq: int
    #: The sender (messages) or who made the change (group events).
    from_user: str
    client_msg_id: int
    #: Broker clock (ms since the epoch) when the message was accepted.
    sent_at_ms: int
    body: bytes
    #: Group entries: the group ("" for 1:1) and the entry's place in the group's own order.
    group_id: str = ""
    group_seq: int = 0
    #: An ``EntryKind`` value: Message, GroupCreated, MembersAdded, MembersRemoved, MemberLeft.
    kind: int = EntryKind.Message
    #: The user sent this message, from this device or another one.
    outgoing: bool = False
    #: Outgoing 1:1 messages: the recipient.
    to_user: str = ""
    #: Group events: the users the group was created with, added, removed, or who left.
    members: Tuple[str, ...] = ()
    #: The echo of a send made by this client: the message the app already shows, now in the
    #: stream (a group message it sent, or the copy of a 1:1 send replayed after a login that
    #: resumed from before it). Outgoing entries of sends from the user's other devices (or
    #: from an earlier instance of this program) have it False.
    echo: bool = False

    @property
    def text(self) -> str:
        """The body as UTF-8 (invalid sequences replaced)."""
        return self.body.decode("utf-8", errors="replace")

    @property
    def is_group(self) -> bool:
        return self.group_id != ""

    @property
    def is_message(self) -> bool:
        """A message (1:1 or group), not a group event."""
        return self.kind == EntryKind.Message

    @property
    def kind_name(self) -> str:
        return _KIND_NAMES.get(self.kind, "Unknown")

    @property
    def peer(self) -> str:
        """1:1 messages: the other user of the conversation (the recipient when outgoing); "" for group entries."""
        if self.is_group:
            return ""
        return self.to_user if self.outgoing else self.from_user

    @property
    def key(self) -> str:
        """Identifies the entry across re-sends and devices: messages by sender and client_msg_id
        (``from/id``, which the sender can compute for what it sent), group events by group and
        group_seq (``group#n``)."""
        if self.is_message:
            return f"{self.from_user}/{self.client_msg_id}"
        return f"{self.group_id}#{self.group_seq}"


@dataclass(frozen=True)
class SendResult:
    client_msg_id: int
    #: The recipient of a 1:1 send ("" for a group send).
    to: str
    #: The group of a group send ("" for a 1:1 send).
    group_id: str = ""
    #: Own-send sync: the seq of this send's copy (``outgoing``) in the user's own stream - where
    #: the user's other devices see it - which this connection is not sent; use it to place the
    #: sent message in stream order. 0 when none was skipped: own-send sync off, a group send
    #: (the sender gets group messages as a member, flagged echo), a resend answered from the
    #: broker's dedup window (a reconnect may then replay the copy, flagged echo), or the
    #: broker's per-connection bound of skipped copies was full (the copy arrives, flagged
    #: echo). ``last_seq`` does not move over it from this answer alone.
    own_seq: int = 0


@dataclass(frozen=True)
class GroupChange:
    """What a membership change (create, add, remove, leave) returns."""

    group_id: str
    #: The group_seq of the change (0 when nothing changed).
    group_seq: int


@dataclass(frozen=True)
class GroupPage:
    """A page of a group's members (group_info)."""

    group_id: str
    #: In user-ID order.
    members: Tuple[GroupMember, ...]
    #: Pass as ``after`` for the next page; "" on the last page.
    next_after: str
    member_count: int


class _Pending:
    __slots__ = ("id", "to", "group_id", "frame", "attempts", "order", "future")

    def __init__(self, id: int, to: str, group_id: str, frame: bytes, order: int, future: "asyncio.Future[SendResult]"):
        self.id, self.to, self.group_id, self.frame, self.order, self.future = id, to, group_id, frame, order, future
        self.attempts = 0


class _PendingOp:
    """A group request waiting for its GroupReply."""

    __slots__ = ("request_id", "op", "group_id", "frame", "read_only", "conn", "order", "future")

    def __init__(self, request_id: int, op: str, group_id: str, frame: bytes, read_only: bool, order: int,
                 future: "asyncio.Future[codec.GroupReply]"):
        self.request_id, self.op, self.group_id, self.frame = request_id, op, group_id, frame
        #: List and info change nothing: safe to ask again on the next connection.
        self.read_only = read_only
        #: The connection it was written on (None: not yet written).
        self.conn: Optional["_Conn"] = None
        self.order, self.future = order, future


class _Conn:
    def __init__(self, transport: Transport):
        self.transport = transport
        self.logged_in = False
        self.error: Optional[BaseException] = None  # set by whoever ends it first
        self.last_tx = self.last_rx = time.monotonic()
        self.ping_sent_at = 0.0


class Client:
    """An asyncio ringpost client.

    ``url`` is ``tcp://host:port`` or ``ws(s)://host:port/ws``. Events (``state``, ``login``,
    ``sent``, ``echo``, ``retry``, ``goaway``, ``error``) go to callbacks added with :meth:`on`;
    deliveries come from ``async for d in client`` (or :meth:`next_delivery`): every stream
    entry this connection is sent except the echoes of this client's own sends
    (``deliver_echoes=True`` yields those too, flagged ``echo``). The copies of its own 1:1
    sends are not sent to it at all (see ``SendResult.own_seq``) unless a login resumes from
    before one; then it is an echo.
    """

    def __init__(
        self,
        url: Optional[str],
        token: TokenSource,
        *,
        device_id: str = "",
        last_seq: int = 0,
        auto_ack: bool = True,
        deliver_echoes: bool = False,
        reconnect: bool = True,
        backoff: Optional[Backoff] = None,
        login_timeout: float = 10.0,
        heartbeat: Optional[float] = None,
        pong_timeout: Optional[float] = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_send_frame: int = DEFAULT_MAX_SEND_FRAME,
        dial: Optional[Dialer] = None,
    ):
        if dial is None:
            if not url:
                raise ValueError("give url or dial")
            dial = dialer_for(url)
        self._dial = dial
        self._token = token
        self.device_id = device_id
        self._auto_ack = auto_ack
        self._deliver_echoes = deliver_echoes
        self._reconnect = reconnect
        self._backoff = backoff or Backoff()
        self._login_timeout = login_timeout
        self._heartbeat_cap = heartbeat
        self._pong_timeout = pong_timeout
        self._max_frame = max_frame
        self._max_send_frame = max_send_frame
        self._state = "idle"
        self._processed = last_seq
        self._emitted = last_seq
        self._ack_sent = 0
        self._ack_scheduled = False
        self._pending: Dict[int, _Pending] = {}
        self._ops: Dict[int, _PendingOp] = {}
        self._next_request_id = 1
        self._next_order = 0
        #: client_msg_ids this client sent, oldest first (bounded by ECHO_MEMORY); kept across
        #: reconnects, so a copy replayed after a resume from before it is flagged echo.
        self._sent_ids: "collections.OrderedDict[int, None]" = collections.OrderedDict()
        #: Skipped echoes (prev seq, seq): processed once everything up to prev is.
        self._echo_wait: Deque[Tuple[int, int]] = collections.deque()
        #: Entries not yet handed out, with the seq of the entry before each; None ends the stream.
        self._deliveries: "asyncio.Queue[Optional[Tuple[int, Delivery]]]" = asyncio.Queue()
        self._last_yielded: Optional[int] = None
        self._listeners: Dict[str, List[Callable[[Any], Any]]] = {}
        self._conn: Optional[_Conn] = None
        self._everything_online = False
        self._task: Optional[asyncio.Task] = None
        self._first_login: Optional[asyncio.Future] = None
        self._wake = asyncio.Event()
        self._closed_error: Optional[BaseException] = None
        self._logout_wait: Optional[asyncio.Future] = None
        self.login: Optional[LoginInfo] = None
        # Random start: client_msg_ids must not repeat across devices and restarts of this user
        # within the broker's dedup window, or a new message would be taken for a resend.
        self._next_id = _random.getrandbits(63)
        self._next_nonce = 1

    # ---- public API ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """idle, connecting, online, reconnecting or closed."""
        return self._state

    @property
    def last_seq(self) -> int:
        """Highest seq processed: what the next login resumes after. Persist it to resume across restarts."""
        return self._processed

    @property
    def pending_sends(self) -> int:
        return len(self._pending)

    @property
    def close_error(self) -> Optional[BaseException]:
        """Why the client closed, when it was not close() or logout()."""
        return self._closed_error

    def on(self, event: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Adds a callback for ``event``; returns a function that removes it."""
        self._listeners.setdefault(event, []).append(callback)
        return lambda: self._listeners.get(event, []).remove(callback)

    def new_client_msg_id(self) -> int:
        self._next_id = (self._next_id + 1) & _U64_MASK
        return self._next_id

    async def connect(self) -> LoginInfo:
        """Starts the session and waits for the first LoginOk.

        Raises RingpostError on a permanent refusal (AUTH_FAILED, TOKEN_EXPIRED, ...), ClientClosed
        if close() runs first, or - with reconnect=False - the first failure. Transient failures
        are retried with backoff meanwhile.
        """
        if self._state == "closed":
            raise ClientClosed("client is closed") from self._closed_error
        if self._state == "online" and self.login:
            return self.login
        if self._first_login is None:
            self._first_login = asyncio.get_running_loop().create_future()
        first = self._first_login
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await asyncio.shield(first)

    async def send(self, to: str, body: Union[bytes, str], *, client_msg_id: Optional[int] = None) -> SendResult:
        """Sends ``body`` to user ``to`` and waits for its SendAck.

        Returns when the broker says OK (the message is in the recipient's inbox), with
        ``own_seq`` naming the seq of the message's copy in the user's own stream (0: none);
        raises SendError (code + name) on any other status. While offline the message waits and
        goes out after the next login; unanswered sends are re-sent after a reconnect with the
        same client_msg_id.
        """
        return await self.send_nowait(to, body, client_msg_id=client_msg_id)

    def send_nowait(self, to: str, body: Union[bytes, str], *, client_msg_id: Optional[int] = None) -> "asyncio.Future[SendResult]":
        """Like send(), but returns the future at once (for many sends in flight)."""
        return self._enqueue_send("", to, body, client_msg_id)

    async def send_to_group(self, group_id: str, body: Union[bytes, str], *, client_msg_id: Optional[int] = None) -> SendResult:
        """Sends ``body`` to group ``group_id`` (members only) and waits for its SendAck.

        Returns SendResult(client_msg_id, to="", group_id, own_seq=0) when the group's owner
        stored it (it then reaches every member, the sender included, where it is this client's
        echo); raises SendError otherwise (NOT_A_MEMBER, GROUP_NOT_FOUND, ...). Queued and
        re-sent like send().
        """
        return await self.send_to_group_nowait(group_id, body, client_msg_id=client_msg_id)

    def send_to_group_nowait(self, group_id: str, body: Union[bytes, str], *,
                             client_msg_id: Optional[int] = None) -> "asyncio.Future[SendResult]":
        """Like send_to_group(), but returns the future at once."""
        return self._enqueue_send(group_id, "", body, client_msg_id)

    def _enqueue_send(self, group_id: str, to: str, body: Union[bytes, str], client_msg_id: Optional[int]) -> "asyncio.Future[SendResult]":
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[SendResult]" = loop.create_future()
        if self._state == "closed":
            fut.set_exception(ClientClosed("client is closed"))
            return fut
        cid = self.new_client_msg_id() if client_msg_id is None else client_msg_id
        existing = self._pending.get(cid)
        if existing:
            return existing.future
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        msg = codec.GroupSend(cid, group_id, data) if group_id else codec.Send(cid, to, data)
        frame = codec.encode_client(msg)
        if len(frame) > self._max_send_frame:
            kind = "GroupSend" if group_id else "Send"
            fut.set_exception(SendError(Code.FRAME_TOO_LARGE, cid, to,
                                        f"the {kind} frame is {len(frame)} bytes, over max_send_frame ({self._max_send_frame}); not sent",
                                        group_id))
            return fut
        p = _Pending(cid, to, group_id, frame, self._next_order, fut)
        self._next_order += 1
        self._pending[cid] = p
        self._note_sent(cid)
        if self._conn and self._conn.logged_in:
            self._write_send(self._conn, p)
        return fut

    def _note_sent(self, cid: int) -> None:
        """Remembers ``cid`` as sent by this client, so its echo is recognised: a group message
        as a member, or a 1:1 copy replayed after a login that resumed before it. The memory is
        the instance's, kept across its reconnects."""
        if cid in self._sent_ids:
            return
        self._sent_ids[cid] = None
        if len(self._sent_ids) > ECHO_MEMORY:
            self._sent_ids.popitem(last=False)

    # ---- groups ---------------------------------------------------------------------------------

    async def create_group(self, group_id: str, members: Iterable[str] = ()) -> GroupChange:
        """Creates ``group_id`` (1..=128 bytes) with this user as its first admin and ``members``.

        Returns the change's group_seq on GroupReply OK; raises GroupError (code + name:
        GROUP_EXISTS, GROUP_FULL, TOO_MANY_GROUPS, INVALID_GROUP, ...) otherwise.
        """
        r = await self._group_request("create", group_id, lambda rid: codec.GroupCreate(rid, group_id, tuple(members)), False)
        return GroupChange(r.group_id or group_id, r.group_seq)

    async def add_members(self, group_id: str, members: Iterable[str]) -> GroupChange:
        """Admins only: adds ``members``. Raises GroupError (NOT_GROUP_ADMIN, ALREADY_A_MEMBER, GROUP_FULL, ...)."""
        r = await self._group_request("add", group_id, lambda rid: codec.GroupAdd(rid, group_id, tuple(members)), False)
        return GroupChange(r.group_id or group_id, r.group_seq)

    async def remove_members(self, group_id: str, members: Iterable[str]) -> GroupChange:
        """Admins only: removes ``members``. Raises GroupError (NOT_GROUP_ADMIN, NOT_A_MEMBER, ...)."""
        r = await self._group_request("remove", group_id, lambda rid: codec.GroupRemove(rid, group_id, tuple(members)), False)
        return GroupChange(r.group_id or group_id, r.group_seq)

    async def leave_group(self, group_id: str) -> GroupChange:
        """Leaves the group (any member). Raises GroupError (NOT_A_MEMBER, GROUP_NOT_FOUND)."""
        r = await self._group_request("leave", group_id, lambda rid: codec.GroupLeave(rid, group_id), False)
        return GroupChange(r.group_id or group_id, r.group_seq)

    async def list_groups(self) -> List[str]:
        """The groups this user is a member of, in ID order."""
        r = await self._group_request("list", "", lambda rid: codec.GroupList(rid), True)
        return list(r.groups)

    async def group_info(self, group_id: str, *, after: str = "", limit: int = 0) -> GroupPage:
        """One page of a group's members (members only), in user-ID order, starting after
        ``after`` ("" = from the start), at most ``limit`` (0 = the broker's page size, 1000)."""
        r = await self._group_request("info", group_id, lambda rid: codec.GroupInfo(rid, group_id, after, limit), True)
        return GroupPage(r.group_id or group_id, r.members, r.next_after, r.member_count)

    async def group_members(self, group_id: str, *, page_size: int = 0) -> List[GroupMember]:
        """Every member of a group: group_info page after page."""
        members: List[GroupMember] = []
        after = ""
        while True:
            page = await self.group_info(group_id, after=after, limit=page_size)
            members.extend(page.members)
            if not page.next_after:
                return members
            after = page.next_after

    def _group_request(self, op: str, group_id: str, make, read_only: bool) -> "asyncio.Future[codec.GroupReply]":
        """Queues a group request: written now when online, else after the next login. A request
        written on a connection lost before its GroupReply is asked again on the next one if it
        only reads (list, info); a change (create, add, remove, leave) raises ConnectionLost
        instead, because it may or may not have been applied."""
        fut: "asyncio.Future[codec.GroupReply]" = asyncio.get_running_loop().create_future()
        if self._state == "closed":
            fut.set_exception(ClientClosed("client is closed"))
            return fut
        rid = self._next_request_id
        self._next_request_id += 1
        frame = codec.encode_client(make(rid))
        if len(frame) > self._max_send_frame:
            fut.set_exception(GroupError(Code.FRAME_TOO_LARGE, rid, op, group_id,
                                         f"the group {op} frame is {len(frame)} bytes, over max_send_frame ({self._max_send_frame}); not sent"))
            return fut
        p = _PendingOp(rid, op, group_id, frame, read_only, self._next_order, fut)
        self._next_order += 1
        self._ops[rid] = p
        if self._conn and self._conn.logged_in:
            self._write_op(self._conn, p)
        return fut

    def _write_op(self, c: "_Conn", p: _PendingOp) -> None:
        p.conn = c
        self._write(c, p.frame)

    def ack(self, seq: int) -> None:
        """Marks every delivery with seq <= ``seq`` processed and acks it (needed with auto_ack=False).

        Capped at the highest seq handed out, so acking a send's ``own_seq`` before any entry
        after it arrived acks the last entry before the copy. The broker extends an ack over the
        skipped copies right after it (this device has those messages), so a login from the
        stored cursor does not replay them; holes need no ack of their own."""
        up_to = min(seq, self._emitted)
        if up_to > self._processed:
            self._processed = up_to
        self._advance_echoes()

    def _advance_echoes(self) -> None:
        """Skipped echoes count as processed once everything before them is; schedules the Ack."""
        while self._echo_wait and self._processed >= self._echo_wait[0][0]:
            self._processed = max(self._processed, self._echo_wait.popleft()[1])
        if self._processed > self._ack_sent and not self._ack_scheduled:
            # Coalesced: one Ack per turn of the loop, for the highest processed seq.
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_ack)

    async def next_delivery(self, timeout: Optional[float] = None) -> Delivery:
        """The next delivery (auto_ack: the previous one counts as processed). Raises ClientClosed at the end."""
        if self._auto_ack and self._last_yielded is not None:
            self.ack(self._last_yielded)
        self._last_yielded = None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            item = await asyncio.wait_for(self._deliveries.get(), left)
            if item is None:
                self._deliveries.put_nowait(None)  # keep the end marker for the next caller
                raise ClientClosed("client is closed") from self._closed_error
            prev, d = item
            if d.echo and not self._deliver_echoes:
                self._echo_wait.append((prev, d.seq))  # shown already by the app: not handed out
                self._advance_echoes()
                continue
            self._last_yielded = d.seq
            return d

    def __aiter__(self):
        return self

    async def __anext__(self) -> Delivery:
        try:
            return await self.next_delivery()
        except ClientClosed:
            raise StopAsyncIteration from None

    async def logout(self) -> None:
        """Logs out (the broker answers GoAway(LOGGED_OUT)) and closes."""
        c = self._conn
        if c and c.logged_in:
            if self._auto_ack and self._last_yielded is not None:
                self.ack(self._last_yielded)
            self._flush_ack()
            self._logout_wait = asyncio.get_running_loop().create_future()
            c.transport.send(codec.encode_client(codec.Logout()))
            try:
                await asyncio.wait_for(asyncio.shield(self._logout_wait), LOGOUT_WAIT)
            except asyncio.TimeoutError:
                pass
        await self.close()

    async def close(self) -> None:
        """Closes the connection and stops reconnecting; pending sends raise ClientClosed."""
        await self._finish(None)
        task = self._task
        if task and task is not asyncio.current_task():
            try:
                await task
            except Exception:
                pass

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- the connection loop --------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while self._state != "closed":
            self._set_state("reconnecting" if self._everything_online else "connecting")
            error, logged_in = await self._session()
            if self._state == "closed":
                return
            if logged_in:
                failures = 0
            if (isinstance(error, RingpostError) and is_permanent(error.code)) or not self._reconnect:
                asked = isinstance(error, RingpostError) and error.code == Code.LOGGED_OUT and self._logout_wait
                await self._finish(None if asked else error)
                return
            failures += 1
            delay = self._backoff.next()
            self._set_state("reconnecting" if self._everything_online else "connecting", error)
            self._emit("error", error)
            self._emit("retry", {"attempt": failures, "delay": delay, "error": error})
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _session(self):
        """One connection: dial, log in, serve until it ends. Returns (why it ended, logged in?)."""
        c: Optional[_Conn] = None
        logged_in = False
        heartbeat: Optional[asyncio.Task] = None
        try:
            deadline = time.monotonic() + self._login_timeout
            token = self._token() if callable(self._token) else self._token
            if inspect.isawaitable(token):
                token = await token
            try:
                transport = await asyncio.wait_for(self._dial(self._max_frame), self._login_timeout)
            except asyncio.TimeoutError:
                raise ConnectionLost(f"connect did not finish within {self._login_timeout} s") from None
            c = _Conn(transport)
            self._conn = c
            if self._state == "closed":
                raise ClientClosed()
            self._write(c, codec.encode_client(codec.Login(token, self.device_id, self._processed)))
            try:
                first = await asyncio.wait_for(transport.recv(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ConnectionLost(f"no LoginOk within {self._login_timeout} s") from None
            msg = codec.decode_server(first)
            if isinstance(msg, (codec.Error, codec.GoAway)):
                raise RingpostError(msg.code, msg.message if isinstance(msg, codec.Error) else msg.reason)
            if not isinstance(msg, codec.LoginOk):
                raise ProtocolError(f"expected LoginOk, got {type(msg).__name__}")
            self._online(c, msg)
            logged_in = True
            heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(c, msg.heartbeat_ms))
            while True:
                frame = await transport.recv()
                c.last_rx = time.monotonic()
                self._handle(c, codec.decode_server(frame))
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as e:  # noqa: BLE001 - every ending is reported, none escapes
            err = (c.error if c and c.error else None) or e
            return err, logged_in
        finally:
            if heartbeat:
                heartbeat.cancel()
            if c:
                c.logged_in = False
                if self._conn is c:
                    self._conn = None
                self._conn_lost(c)
                await c.transport.close()

    def _online(self, c: _Conn, ok: codec.LoginOk) -> None:
        resumed_from = self._processed
        reset = ok.head_seq < self._processed
        if reset:
            # The broker has fewer messages than this device processed (its data was wiped):
            # seqs start again after head_seq, and the old high-water mark would drop them all.
            self._processed = self._emitted = ok.head_seq
            self._echo_wait.clear()
        self._ack_sent = self._processed  # the broker counts the login's last_seq as acked
        c.logged_in = True
        self._everything_online = True
        self._backoff.reset()
        self.login = LoginInfo(ok.user_id, ok.shard, ok.head_seq, ok.heartbeat_ms, ok.oldest_seq, ok.gap, resumed_from, reset)
        self._set_state("online")
        self._emit("login", self.login)
        first, self._first_login = self._first_login, None
        if first and not first.done():
            first.set_result(self.login)
        # Everything queued, in the order the app asked for it (a group created before a send to it).
        queued: List[Union[_Pending, _PendingOp]] = list(self._pending.values())
        queued += [op for op in self._ops.values() if op.conn is None]
        queued.sort(key=lambda p: p.order)
        for p in queued:
            if isinstance(p, _PendingOp):
                self._write_op(c, p)
            else:
                self._write_send(c, p)

    def _handle(self, c: _Conn, msg: codec.ServerMsg) -> None:
        if isinstance(msg, codec.Deliver):
            if msg.seq <= self._emitted:
                return  # replayed after a reconnect: already handed out
            prev, self._emitted = self._emitted, msg.seq
            # Group events carry client_msg_id 0: only messages can be echoes.
            echo = msg.outgoing and msg.kind == EntryKind.Message and msg.client_msg_id in self._sent_ids
            d = Delivery(msg.seq, msg.from_user, msg.client_msg_id, msg.sent_at_ms, msg.body, msg.group_id,
                         msg.group_seq, msg.kind, msg.outgoing, msg.to_user, msg.members, echo)
            if echo:
                self._emit("echo", d)
            if echo and not self._deliver_echoes and self._deliveries.empty():
                # Nothing waits before it: no need to queue it for an iterator that may never come.
                self._echo_wait.append((prev, d.seq))
                self._advance_echoes()
            else:
                self._deliveries.put_nowait((prev, d))
        elif isinstance(msg, codec.SendAck):
            p = self._pending.pop(msg.client_msg_id, None)
            if p and not p.future.done():
                if msg.status == Code.OK:
                    # own_seq is only reported: the copy may not be durable yet (a cross-shard
                    # send), so last_seq moves past it with the next entry after it, not here.
                    p.future.set_result(SendResult(p.id, p.to, p.group_id, msg.own_seq))
                else:
                    p.future.set_exception(SendError(msg.status, p.id, p.to, "", p.group_id))
        elif isinstance(msg, codec.GroupReply):
            op = self._ops.pop(msg.request_id, None)
            if op and not op.future.done():
                if msg.status == Code.OK:
                    op.future.set_result(msg)
                else:
                    op.future.set_exception(GroupError(msg.status, msg.request_id, op.op, msg.group_id or op.group_id, msg.message))
        elif isinstance(msg, (codec.Error, codec.GoAway)):
            detail = msg.message if isinstance(msg, codec.Error) else msg.reason
            if isinstance(msg, codec.GoAway):
                self._emit("goaway", {"code": msg.code, "code_name": code_name(msg.code), "reason": detail})
                waiter = self._logout_wait
                if msg.code == Code.LOGGED_OUT and waiter and not waiter.done():
                    waiter.set_result(None)
            raise RingpostError(msg.code, detail)  # ends the session; the broker closes too
        elif isinstance(msg, codec.LoginOk):
            raise ProtocolError("LoginOk after login")
        # Pong and frame types newer than this build: nothing to do (last_rx is updated).

    async def _heartbeat(self, c: _Conn, broker_ms: int) -> None:
        interval = max(0.05, min((broker_ms / 1000) or DEFAULT_HEARTBEAT, self._heartbeat_cap or float("inf")))
        pong_timeout = self._pong_timeout or interval
        half = interval / 2
        # Every half interval: a Ping when nothing was written for half an interval (the broker
        # hears from us more often than heartbeat_ms), or nothing heard for as long (a dead path
        # is noticed even while we keep writing); no answer within pong_timeout drops the link.
        while c.logged_in:
            await asyncio.sleep(half)
            now = time.monotonic()
            outstanding = c.ping_sent_at > c.last_rx
            if outstanding and now - c.ping_sent_at >= pong_timeout:
                c.error = ConnectionLost(f"no answer to a ping within {pong_timeout * 1000:.0f} ms")
                await c.transport.close()
                return
            if now - c.last_tx >= half or (not outstanding and now - c.last_rx >= half):
                if not outstanding:
                    c.ping_sent_at = now
                self._write(c, codec.encode_client(codec.Ping(self._next_nonce)))
                self._next_nonce += 1

    def _write(self, c: _Conn, frame: bytes) -> None:
        c.last_tx = time.monotonic()
        c.transport.send(frame)

    def _write_send(self, c: _Conn, p: _Pending) -> None:
        p.attempts += 1
        self._write(c, p.frame)
        self._emit("sent", {"client_msg_id": p.id, "to": p.to, "group_id": p.group_id, "attempt": p.attempts})

    def _conn_lost(self, c: _Conn) -> None:
        """Group requests written on ``c`` and not answered: reads are asked again, changes fail."""
        for op in list(self._ops.values()):
            if op.conn is not c:
                continue
            if op.read_only:
                op.conn = None
            else:
                del self._ops[op.request_id]
                if not op.future.done():
                    op.future.set_exception(ConnectionLost(
                        f"the connection was lost before the broker answered group {op.op} {op.group_id!r}; "
                        "it may or may not have been applied"))

    def _flush_ack(self) -> None:
        self._ack_scheduled = False
        c = self._conn
        if c and c.logged_in and self._processed > self._ack_sent:
            self._ack_sent = self._processed
            self._write(c, codec.encode_client(codec.Ack(self._processed)))

    async def _finish(self, error: Optional[BaseException]) -> None:
        if self._state == "closed":
            return
        self._closed_error = error
        self._set_state("closed", error)
        self._wake.set()
        # Before the connection closes, so requests in flight end as closed, not as lost.
        closed = ClientClosed(f"client closed: {error}" if error else "client closed")
        for p in list(self._pending.values()) + list(self._ops.values()):
            if not p.future.done():
                p.future.set_exception(error if isinstance(error, RingpostError) else closed)
                p.future.exception()  # retrieved: no "never retrieved" warning for fire-and-forget sends
        self._pending.clear()
        self._ops.clear()
        c = self._conn
        if c:
            c.logged_in = False
            await c.transport.close()
        first, self._first_login = self._first_login, None
        if first and not first.done():
            first.set_exception(error or closed)
        self._deliveries.put_nowait(None)

    def _set_state(self, state: str, error: Optional[BaseException] = None) -> None:
        if state == self._state:
            return
        previous, self._state = self._state, state
        self._emit("state", {"state": state, "previous": previous, "error": error})

    def _emit(self, event: str, value: Any) -> None:
        for cb in list(self._listeners.get(event, [])):
            try:
                cb(value)
            except Exception as e:  # a callback's bug must not break the session
                if event != "error":
                    self._emit("error", e)
