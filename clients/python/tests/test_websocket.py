"""The WebSocket transport against the broker's own /ws listener ([server] ws_listen): one binary
message per frame, no prefix; a WebSocket user and a TCP user talk 1:1 and in a group, and a
dropped WebSocket resumes."""

from ringpost_client import Backoff, Client
from support import WAIT, Events, Proxy, mint_token, run, unique_user


@run
async def test_a_websocket_user_and_a_tcp_user_talk_and_the_websocket_resumes_after_a_drop(broker):
    proxy = await Proxy(broker.ws_port).start()  # bytes through: the upgrade, then frames
    a, b = unique_user("ws-alice"), unique_user("tcp-bob")
    alice = Client(f"ws://127.0.0.1:{proxy.port}/ws", mint_token(a), device_id="browser", backoff=Backoff(0.02, 0.05))
    bob = Client(broker.url, mint_token(b), device_id="d")
    await alice.connect()
    await bob.connect()
    assert alice.login.user_id == a
    sent = await alice.send(b, "from a websocket")
    assert sent.own_seq == 1  # its copy in her stream, which this connection is not sent
    assert (await bob.next_delivery(WAIT)).text == "from a websocket"
    await bob.send(a, "from tcp")
    d = await alice.next_delivery(WAIT)
    assert (d.seq, d.text, d.from_user) == (2, "from tcp", b)  # the first entry she gets: past the hole at 1

    ev = Events(alice, "login")
    back = ev.wait("login")
    alice.ack(d.seq)
    proxy.cut_all()
    assert (await back).resumed_from == d.seq  # after the last processed seq
    await bob.send(a, "two")
    assert (await alice.next_delivery(WAIT)).text == "two"
    await alice.close()
    await bob.close()
    await proxy.close()


@run
async def test_a_group_across_transports(broker):
    a, b = unique_user("ws-g"), unique_user("tcp-g")
    group = unique_user("mixed")
    alice = Client(broker.ws_url, mint_token(a), device_id="browser")
    bob = Client(broker.url, mint_token(b), device_id="d")
    await alice.connect()
    await bob.connect()
    await alice.create_group(group, [b])
    await bob.send_to_group(group, "tcp to the group")
    await alice.send_to_group(group, "websocket to the group")
    # Each one's own message is that client's echo: not yielded, each message shown once.
    got_a = [await alice.next_delivery(WAIT) for _ in range(2)]
    got_b = [await bob.next_delivery(WAIT) for _ in range(2)]
    assert [(d.kind_name, d.group_seq, d.text) for d in got_a] == [("GroupCreated", 1, ""), ("Message", 2, "tcp to the group")]
    assert [(d.kind_name, d.group_seq, d.text) for d in got_b] == [("GroupCreated", 1, ""), ("Message", 3, "websocket to the group")]
    await alice.close()
    await bob.close()
