"""Own-send sync (the broker's default): every message a user sends also enters the user's own
stream, on every device. The client flags the entry of its own send as ``echo`` and does not
yield it (it goes to ``on("echo")`` callbacks), so each message is presented once; the user's
other devices get it as outgoing, not an echo."""

import asyncio

from ringpost_client import Client, EntryKind
from support import WAIT, Events, mint_token, run, unique_user


async def login(broker, user, device, **kw) -> Client:
    c = Client(broker.url, mint_token(user), device_id=device, **kw)
    await c.connect()
    return c


@run
async def test_the_echo_is_flagged_on_the_sender_and_outgoing_on_the_other_device(broker):
    a, b = unique_user("echo-a"), unique_user("echo-b")
    phone, laptop, bob = await login(broker, a, "phone"), await login(broker, a, "laptop"), await login(broker, b, "d")
    ev = Events(phone, "echo")
    echo = ev.wait("echo")
    ack = await phone.send(b, "hi bob")
    e = await echo
    assert (e.seq, e.from_user, e.to_user, e.peer, e.client_msg_id, e.text, e.outgoing, e.echo, e.kind) == (
        1, a, b, b, ack.client_msg_id, "hi bob", True, True, EntryKind.Message)
    assert e.key == f"{a}/{ack.client_msg_id}"
    other = await laptop.next_delivery(WAIT)
    assert (other.seq, other.from_user, other.to_user, other.peer, other.outgoing, other.echo) == (1, a, b, b, True, False)

    reply = await bob.send(a, "hi alice")
    first = await phone.next_delivery(WAIT)  # the phone's own message is not yielded again
    assert (first.seq, first.client_msg_id, first.text) == (2, reply.client_msg_id, "hi alice")
    assert (await laptop.next_delivery(WAIT)).seq == 2
    assert len(ev.log["echo"]) == 1
    got = await bob.next_delivery(WAIT)
    assert (got.seq, got.text) == (1, "hi bob")
    for c in (phone, laptop, bob):
        await c.close()


@run
async def test_group_echo_and_deliver_echoes(broker):
    a = unique_user("gecho-a")
    group = unique_user("gecho")
    phone = await login(broker, a, "phone")
    tablet = await login(broker, a, "tablet", deliver_echoes=True)
    tablet_echoes = Events(tablet, "echo")
    await phone.create_group(group)
    from_phone = await phone.send_to_group(group, "from the phone")
    from_tablet = await tablet.send_to_group(group, "from the tablet")
    flags = lambda ds: [(d.seq, d.kind_name, d.group_seq, d.client_msg_id, d.outgoing, d.echo) for d in ds]  # noqa: E731
    got_phone = [await phone.next_delivery(WAIT) for _ in range(2)]  # its own message is its echo: skipped
    assert flags(got_phone) == [(1, "GroupCreated", 1, 0, True, False), (3, "Message", 3, from_tablet.client_msg_id, True, False)]
    got_tablet = [await tablet.next_delivery(WAIT) for _ in range(3)]
    assert flags(got_tablet) == [
        (1, "GroupCreated", 1, 0, True, False), (2, "Message", 2, from_phone.client_msg_id, True, False),
        (3, "Message", 3, from_tablet.client_msg_id, True, True)], "deliver_echoes: every entry, the echo flagged"
    assert [d.seq for d in tablet_echoes.log["echo"]] == [3]
    await phone.close()
    await tablet.close()


@run
async def test_echoes_count_as_processed_once_everything_before_them_is(broker):
    a, b = unique_user("ack-a"), unique_user("ack-b")
    bob = await login(broker, b, "d")
    alice = await login(broker, a, "manual", auto_ack=False)
    ev = Events(alice, "echo")
    await bob.send(a, "one")
    d = await alice.next_delivery(WAIT)
    echoed = ev.wait("echo")
    await alice.send(b, "two")  # lands at seq 2, behind the unprocessed seq 1
    await echoed
    assert alice.last_seq == 0
    alice.ack(d.seq)
    assert alice.last_seq == 2, "the echo right after seq 1 counts as processed with it"
    await alice.logout()  # flushes the ack (2)
    again = await login(broker, a, "manual")
    await bob.send(a, "three")
    d = await again.next_delivery(WAIT)
    assert (d.seq, d.text) == (3, "three"), "the stored cursor covered the echo: nothing replayed"

    # A client that only sends and never iterates: its echoes are still acked (no backlog).
    sender = await login(broker, unique_user("sender-only"), "d")
    sev = Events(sender, "echo")
    e = sev.wait("echo")
    await sender.send(b, "x")
    seq = (await e).seq
    await asyncio.sleep(0)  # the ack is scheduled with call_soon
    assert sender.last_seq == seq
    for c in (bob, again, sender):
        await c.close()


@run
async def test_a_resend_by_a_new_client_with_the_same_id_has_its_echo_recognised(broker):
    a, b = unique_user("reload-a"), unique_user("reload-b")
    first = await login(broker, a, "browser")
    cid = first.new_client_msg_id()
    await first.close()
    again = await login(broker, a, "browser")
    ev = Events(again, "echo")
    echo = ev.wait("echo")
    assert (await again.send(b, "stored before", client_msg_id=cid)).client_msg_id == cid
    e = await echo
    assert (e.client_msg_id, e.echo, e.text) == (cid, True, "stored before")
    await again.close()
