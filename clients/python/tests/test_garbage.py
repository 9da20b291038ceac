"""A peer that is not a well-behaved broker: garbage, oversized prefixes, abrupt closes, text
WebSocket messages. Each is a typed error, the client keeps retrying, and logs in once the
peer behaves."""

import asyncio

from ringpost_client import Backoff, Client, ConnectionLost, ProtocolError, codec, encode_server
from support import WAIT, Events, mint_token, prefixed, raw_server, run

LOGIN_OK = encode_server(codec.LoginOk("eve", 0, 0, 30000, 0, False))


@run
async def test_garbage_oversize_and_abrupt_close_are_retried_then_a_login_works():
    behaviours = [
        lambda w: w.write(prefixed(b"this is not a flatbuffer at all")),
        lambda w: w.write(b"\x00\x00\x00\x40"),  # 1 GiB announced
        lambda w: w.transport.abort(),
        lambda w: w.write(prefixed(LOGIN_OK) + prefixed(b"\x01\x02\x03")),  # LoginOk, then junk
        lambda w: w.write(prefixed(LOGIN_OK)),
    ]
    hold = asyncio.Event()

    async def on_conn(r, w, i):
        behaviours[min(i, len(behaviours) - 1)](w)
        await hold.wait()

    server = await raw_server(on_conn)
    c = Client(server.url, mint_token("eve"), backoff=Backoff(0.005, 0.01))
    ev = Events(c, "retry", "state")
    second_online = ev.wait("state", lambda s: s["state"] == "online" and len(ev.log["retry"]) == 4)
    await asyncio.wait_for(c.connect(), WAIT)
    await second_online
    errors = [r["error"] for r in ev.log["retry"]]
    assert isinstance(errors[0], ProtocolError) and "malformed frame" in str(errors[0])
    assert isinstance(errors[1], ProtocolError) and "exceeds the limit" in str(errors[1])
    assert isinstance(errors[2], ConnectionLost)
    assert isinstance(errors[3], ProtocolError)
    assert [s["state"] for s in ev.log["state"]] == ["connecting", "online", "reconnecting", "online"]
    await c.close()
    hold.set()
    server.close()


@run
async def test_a_text_websocket_message_is_a_protocol_error():
    from websockets.asyncio.server import serve

    n = []

    async def handler(ws):
        n.append(1)
        await ws.send("hello as text" if len(n) == 1 else LOGIN_OK)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        c = Client(f"ws://127.0.0.1:{port}/ws", mint_token("eve"), backoff=Backoff(0.005, 0.01))
        ev = Events(c, "retry")
        retry = ev.wait("retry")
        await asyncio.wait_for(c.connect(), WAIT)
        err = (await retry)["error"]
        assert isinstance(err, ProtocolError) and "text message" in str(err)
        await c.close()
