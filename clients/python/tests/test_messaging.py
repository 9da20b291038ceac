"""Send -> SendAck -> Deliver -> Ack between users on the real broker."""

import asyncio
import time

import pytest

from ringpost_client import Client, Code, SendError
from support import WAIT, mint_token, run, unique_user


async def login(broker, user, device="d", **kw):
    c = Client(broker.url, mint_token(user), device_id=device, **kw)
    await c.connect()
    return c


@run
async def test_round_trip_both_ways(broker):
    a, b = unique_user("alice"), unique_user("bob")
    alice, bob = await login(broker, a), await login(broker, b)
    before = time.time() * 1000
    ack = await alice.send(b, "hello bob", client_msg_id=41)
    assert (ack.client_msg_id, ack.to) == (41, b)
    d = await bob.next_delivery(WAIT)
    assert (d.seq, d.from_user, d.client_msg_id, d.text, d.key) == (1, a, 41, "hello bob", f"{a}/41")
    assert before - 5000 <= d.sent_at_ms <= time.time() * 1000 + 5000
    r = await bob.send(a, b"\x00\xff\n\r")
    back = await alice.next_delivery(WAIT)
    assert (back.body, back.client_msg_id, back.from_user) == (b"\x00\xff\n\r", r.client_msg_id, b)
    await alice.close()
    await bob.close()


@run
async def test_many_sends_arrive_in_seq_order_and_auto_ack(broker):
    a, b = unique_user("burst-a"), unique_user("burst-b")
    alice, bob = await login(broker, a), await login(broker, b)
    await asyncio.gather(*(alice.send_nowait(b, f"m{i}") for i in range(50)))
    got = [await bob.next_delivery(WAIT) for _ in range(50)]
    assert [d.seq for d in got] == list(range(1, 51))
    assert [d.text for d in got] == [f"m{i}" for i in range(50)]
    assert bob.last_seq == 49  # the 50th counts as processed when the next one is asked for
    bob.ack(50)
    assert bob.last_seq == 50
    await alice.close()
    await bob.close()


@run
async def test_non_ok_send_ack_raises_send_error_and_oversized_is_refused_locally(broker):
    alice = await login(broker, unique_user("picky"))
    with pytest.raises(SendError) as e:
        await alice.send("", "to nobody", client_msg_id=7)
    assert (e.value.code, e.value.code_name, e.value.client_msg_id) == (Code.INVALID_RECIPIENT, "INVALID_RECIPIENT", 7)
    with pytest.raises(SendError) as big:
        await alice.send("bob", bytes(70 * 1024))
    assert big.value.code_name == "FRAME_TOO_LARGE"
    assert alice.state == "online"
    await alice.send(unique_user("someone"), "still fine")
    await alice.close()


@run
async def test_sends_before_connect_go_out_after_login(broker):
    a, b = unique_user("early-a"), unique_user("early-b")
    bob = await login(broker, b)
    alice = Client(broker.url, mint_token(a), device_id="d")
    sent = alice.send_nowait(b, "queued before connect")
    assert alice.pending_sends == 1
    await alice.connect()
    await asyncio.wait_for(sent, WAIT)
    assert (await bob.next_delivery(WAIT)).text == "queued before connect"
    await alice.close()
    await bob.close()


@run
async def test_acks_move_the_stored_cursor(broker):
    a, b = unique_user("cur-a"), unique_user("cur-b")
    alice = await login(broker, a)
    for i in range(1, 5):
        await alice.send(b, f"n{i}")
    bob = await login(broker, b, "tablet", auto_ack=False)
    assert [(await bob.next_delivery(WAIT)).seq for _ in range(4)] == [1, 2, 3, 4]
    bob.ack(2)
    await bob.logout()  # flushes the ack first
    again = await login(broker, b, "tablet")
    first = await again.next_delivery(WAIT)
    assert (first.seq, first.text) == (3, "n3")
    await again.close()
    await alice.close()
