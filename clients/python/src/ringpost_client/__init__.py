"""asyncio client for the ringpost IM broker: TCP (``tcp://host:port``) and WebSocket
(``ws(s)://host:port/ws``, needs ``pip install 'ringpost-client[ws]'``).

    async with Client("tcp://127.0.0.1:7070", token, device_id="bot") as c:
        await c.send("bob", "hi")            # returns once the SendAck says OK
        async for d in c:                    # deliveries, in seq order
            print(d.from_user, d.text)
"""

from .backoff import Backoff
from .client import Client, Delivery, LoginInfo, SendResult
from .codec import decode_server, encode_client, encode_server
from .codes import Code, code_name, is_permanent
from .errors import ClientClosed, ConnectionLost, ProtocolError, RingpostError, SendError
from .transport import LEN_PREFIX, Transport, tcp_dialer, websocket_dialer

__all__ = [
    "Backoff", "Client", "ClientClosed", "Code", "ConnectionLost", "Delivery", "LEN_PREFIX", "LoginInfo",
    "ProtocolError", "RingpostError", "SendError", "SendResult", "Transport", "code_name", "decode_server",
    "encode_client", "encode_server", "is_permanent", "tcp_dialer", "websocket_dialer",
]
