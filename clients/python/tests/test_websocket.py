"""The WebSocket transport against the real broker, through a test-owned WebSocket->TCP bridge
(the broker's own /ws listener is not built yet): one binary message per frame, no prefix."""

from ringpost_client import Backoff, Client
from support import WAIT, Events, WsBridge, mint_token, run, unique_user


@run
async def test_a_websocket_user_and_a_tcp_user_talk_and_the_websocket_resumes_after_a_drop(broker):
    bridge = await WsBridge(broker.port).start()
    a, b = unique_user("ws-alice"), unique_user("tcp-bob")
    alice = Client(bridge.url, mint_token(a), device_id="browser", backoff=Backoff(0.02, 0.05))
    bob = Client(broker.url, mint_token(b), device_id="d")
    await alice.connect()
    await bob.connect()
    assert alice.login.user_id == a
    await alice.send(b, "from a websocket")
    assert (await bob.next_delivery(WAIT)).text == "from a websocket"
    await bob.send(a, "from tcp")
    d = await alice.next_delivery(WAIT)
    assert (d.text, d.from_user) == ("from tcp", b)

    ev = Events(alice, "login")
    back = ev.wait("login")
    alice.ack(d.seq)
    for ws in list(bridge.conns):
        ws.transport.abort()
    assert (await back).resumed_from == 1
    await bob.send(a, "two")
    assert (await alice.next_delivery(WAIT)).text == "two"
    await alice.close()
    await bob.close()
    await bridge.close()
