"""Offline delivery and replay, across client instances and within one, without duplicates."""

from ringpost_client import Backoff, Client
from support import WAIT, Events, Proxy, mint_token, run, unique_user


@run
async def test_offline_messages_arrive_in_order_and_a_restart_resumes_after_the_persisted_seq(broker):
    a, b = unique_user("alice"), unique_user("bob")
    alice = Client(broker.url, mint_token(a), device_id="d")
    await alice.connect()
    for i in range(1, 6):
        await alice.send(b, f"offline {i}")
    bob = Client(broker.url, mint_token(b), device_id="phone", auto_ack=False)
    await bob.connect()
    got = [await bob.next_delivery(WAIT) for _ in range(5)]
    assert [(d.seq, d.text) for d in got] == [(i, f"offline {i}") for i in range(1, 6)]
    bob.ack(3)
    persisted = bob.last_seq
    assert persisted == 3
    await bob.close()

    again = Client(broker.url, mint_token(b), device_id="phone", last_seq=persisted)
    await again.connect()
    assert again.login.resumed_from == 3
    await alice.send(b, "live 6")
    rest = [await again.next_delivery(WAIT) for _ in range(3)]
    assert [(d.seq, d.text) for d in rest] == [(4, "offline 4"), (5, "offline 5"), (6, "live 6")]
    await again.close()
    await alice.close()


@run
async def test_replay_after_a_dropped_connection_is_not_handed_out_again(broker):
    proxy = await Proxy(broker.port).start()
    a, b = unique_user("alice"), unique_user("bob")
    alice = Client(broker.url, mint_token(a), device_id="d")
    await alice.connect()
    bob = Client(proxy.url, mint_token(b), device_id="d", auto_ack=False, backoff=Backoff(0.02, 0.05))
    await bob.connect()
    ev = Events(bob, "login")
    for i in range(1, 4):
        await alice.send(b, f"m{i}")
    seen = [(await bob.next_delivery(WAIT)).seq for _ in range(3)]
    bob.ack(1)  # 2 and 3 handed out but not processed
    back = ev.wait("login")
    proxy.cut_all()
    assert (await back).resumed_from == 1  # the broker replays 2 and 3; the client drops them
    await alice.send(b, "m4")
    seen.append((await bob.next_delivery(WAIT)).seq)
    assert seen == [1, 2, 3, 4]
    await bob.close()
    await alice.close()
    await proxy.close()
