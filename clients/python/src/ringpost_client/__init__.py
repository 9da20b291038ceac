"""asyncio client for the ringpost IM broker: TCP (``tcp://host:port``) and WebSocket
(``ws(s)://host:port/ws``, needs ``pip install 'ringpost-client[ws]'``).

    async with Client("tcp://127.0.0.1:7070", token, device_id="bot") as c:
        await c.send("bob", "hi")            # returns once the SendAck says OK
        await c.create_group("team", ["bob"])
        await c.send_to_group("team", "hello team")
        async for d in c:                    # deliveries, in seq order (own echoes left out)
            print(d.group_id or "-", d.from_user, d.text)
"""

from .backoff import Backoff
from .client import Client, Delivery, GroupChange, GroupPage, LoginInfo, SendResult
from .codec import EntryKind, GroupMember, decode_server, encode_client, encode_server
from .codes import Code, code_name, is_permanent
from .errors import ClientClosed, ConnectionLost, GroupError, ProtocolError, RingpostError, SendError
from .transport import LEN_PREFIX, Transport, tcp_dialer, websocket_dialer

__all__ = [
    "Backoff", "Client", "ClientClosed", "Code", "ConnectionLost", "Delivery", "EntryKind", "GroupChange", "GroupError",
    "GroupMember", "GroupPage", "LEN_PREFIX", "LoginInfo", "ProtocolError", "RingpostError", "SendError", "SendResult",
    "Transport", "code_name", "decode_server", "encode_client", "encode_server", "is_permanent", "tcp_dialer",
    "websocket_dialer",
]
