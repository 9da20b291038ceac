"""Own-send sync (the broker's default): every 1:1 message a user sends also enters the user's
own stream, as ``outgoing``, for the user's other devices. The connection that made the send is
not sent that copy: its SendAck names the copy's seq (``SendResult.own_seq``) and the client
tolerates the hole (acks stop before it; the broker extends them over it). A login that resumes
from before the copy gets it replayed, and the client that sent it flags it ``echo`` (it goes to
``on("echo")`` callbacks, not to the iterator), so each message is presented once. Group
messages still reach their sender as a member, flagged echo."""

import pytest

from ringpost_client import Backoff, Client, EntryKind
from support import WAIT, Events, Proxy, mint_token, name_on, owner, run, unique_user


async def login(url, user, device, **kw) -> Client:
    c = Client(url, mint_token(user), device_id=device, **kw)
    await c.connect()
    return c


def users(placement: str):
    """A sender and a recipient owned by the same shard or by the two different ones (the
    broker's SendAck and copy come from different paths for the two)."""
    on = lambda u: owner(u, 2)  # noqa: E731 - the broker fixture runs two shards
    a = name_on(unique_user("echo-a"), 0, on)
    b = name_on(unique_user("echo-b"), 0 if placement == "same-shard" else 1, on)
    return a, b


@pytest.mark.parametrize("placement", ["same-shard", "cross-shard"])
@run
async def test_the_sender_is_not_sent_its_copy_and_its_other_device_gets_it_at_own_seq(broker, placement):
    a, b = users(placement)
    phone, laptop = await login(broker.url, a, "phone"), await login(broker.url, a, "laptop")
    bob = await login(broker.url, b, "d")
    ev = Events(phone, "echo")
    ack = await phone.send(b, "hi bob")
    assert ack.own_seq == 1, "the SendAck names the copy's seq in alice's stream"
    assert phone.last_seq == 0, "the SendAck alone does not move the resume point over the copy"
    other = await laptop.next_delivery(WAIT)
    assert (other.seq, other.from_user, other.to_user, other.peer, other.client_msg_id, other.text, other.outgoing,
            other.echo, other.kind) == (ack.own_seq, a, b, b, ack.client_msg_id, "hi bob", True, False, EntryKind.Message)
    assert other.key == f"{a}/{ack.client_msg_id}"
    got = await bob.next_delivery(WAIT)
    assert (got.seq, got.text, got.outgoing) == (1, "hi bob", False)

    reply = await bob.send(a, "hi alice")
    first = await phone.next_delivery(WAIT)  # entries come in seq order: the copy at 1 was never sent
    assert (first.seq, first.client_msg_id, first.text, first.outgoing) == (2, reply.client_msg_id, "hi alice", False)
    assert ev.log["echo"] == [], "no copy of its own send reached the phone"
    assert (await laptop.next_delivery(WAIT)).seq == 2

    again = await phone.send(b, "and again")
    assert again.own_seq == 3
    third = await laptop.next_delivery(WAIT)
    assert (third.seq, third.client_msg_id, third.outgoing, third.echo) == (3, again.client_msg_id, True, False)
    for c in (phone, laptop, bob):
        await c.close()


@run
async def test_group_echo_and_deliver_echoes(broker):
    a = unique_user("gecho-a")
    group = unique_user("gecho")
    phone = await login(broker.url, a, "phone")
    tablet = await login(broker.url, a, "tablet", deliver_echoes=True)
    tablet_echoes = Events(tablet, "echo")
    await phone.create_group(group)
    from_phone = await phone.send_to_group(group, "from the phone")
    from_tablet = await tablet.send_to_group(group, "from the tablet")
    assert (from_phone.own_seq, from_tablet.own_seq) == (0, 0), "group sends skip nothing: the sender is a member"
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


@pytest.mark.parametrize("placement", ["same-shard", "cross-shard"])
@run
async def test_an_ack_of_the_entry_before_the_copy_covers_it(broker, placement):
    a, b = users(placement)
    bob = await login(broker.url, b, "d")
    alice = await login(broker.url, a, "manual", auto_ack=False)
    laptop = await login(broker.url, a, "laptop")
    await bob.send(a, "one")
    d = await alice.next_delivery(WAIT)
    assert (await laptop.next_delivery(WAIT)).seq == d.seq == 1
    r = await alice.send(b, "two")
    assert r.own_seq == 2
    # The copy is durable and its devices were woken: the laptop has it (the broker passed
    # alice's connection over it in the same round).
    assert (await laptop.next_delivery(WAIT)).seq == r.own_seq
    assert alice.last_seq == 0
    alice.ack(d.seq)
    assert alice.last_seq == 1
    alice.ack(r.own_seq)
    assert alice.last_seq == 1, "capped at what was handed out: the hole is not passed over from the SendAck"
    await alice.logout()  # flushes the Ack of 1, which the broker extends over the copy at 2
    again = await login(broker.url, a, "manual")
    assert again.login.resumed_from == 0  # from the stored cursor
    await bob.send(a, "three")
    d = await again.next_delivery(WAIT)
    assert (d.seq, d.text) == (3, "three"), "the stored cursor covered the copy: nothing replayed"
    for c in (bob, again, laptop):
        await c.close()


@pytest.mark.parametrize("placement", ["same-shard", "cross-shard"])
@run
async def test_a_client_that_only_sends_leaves_no_backlog(broker, placement):
    a, b = users(placement)
    bot = await login(broker.url, a, "bot")  # auto_ack, never iterates
    laptop = await login(broker.url, a, "laptop")
    sent = [await bot.send(b, f"m{i}") for i in range(3)]
    assert [r.own_seq for r in sent] == [1, 2, 3]
    # The signal that every copy is durable and was passed over on the bot's connection.
    assert [(await laptop.next_delivery(WAIT)).seq for _ in sent] == [1, 2, 3]
    assert bot.last_seq == 0
    await bot.close()
    fresh = await login(broker.url, a, "bot")  # the same device, from the stored cursor
    bob = await login(broker.url, b, "d")
    marker = await bob.send(a, "marker")
    d = await fresh.next_delivery(WAIT)
    assert (d.seq, d.client_msg_id, d.text) == (4, marker.client_msg_id, "marker"), "the skipped copies were acked"
    for c in (fresh, laptop, bob):
        await c.close()


@pytest.mark.parametrize("deliver_echoes", [False, True])
@run
async def test_a_reconnect_from_before_the_copy_replays_it_flagged_echo(broker, deliver_echoes):
    proxy = await Proxy(broker.port).start()
    a, b = unique_user("replay-a"), unique_user("replay-b")
    alice = await login(proxy.url, a, "d", auto_ack=False, deliver_echoes=deliver_echoes, backoff=Backoff(0.02, 0.05))
    bob = await login(broker.url, b, "d")
    await bob.send(a, "one")
    d = await alice.next_delivery(WAIT)
    alice.ack(d.seq)
    order = []
    alice.on("login", lambda info: order.append(("login", info.resumed_from)))
    alice.on("echo", lambda e: order.append(("echo", e.seq)))
    ev = Events(alice, "echo")
    echoed = ev.wait("echo")
    r = await alice.send(b, "two")
    assert r.own_seq == 2
    proxy.cut_all()  # this client reconnects itself, from last_seq 1: before the copy
    e = await echoed
    assert (e.seq, e.from_user, e.to_user, e.client_msg_id, e.text, e.outgoing, e.echo) == (
        r.own_seq, a, b, r.client_msg_id, "two", True, True)
    assert order == [("login", 1), ("echo", 2)], "the copy came only after the reconnect"
    three = await bob.send(a, "three")
    if deliver_echoes:
        got = await alice.next_delivery(WAIT)
        assert (got.seq, got.echo, got.client_msg_id) == (2, True, r.client_msg_id), "deliver_echoes yields it, flagged"
        alice.ack(got.seq)
    got = await alice.next_delivery(WAIT)
    assert (got.seq, got.client_msg_id, got.echo) == (3, three.client_msg_id, False)
    assert alice.last_seq == 2, "the echo counts as processed with everything before it"
    alice.ack(got.seq)
    assert alice.last_seq == 3
    assert len(ev.log["echo"]) == 1
    await alice.close()
    await bob.close()
    await proxy.close()


@run
async def test_a_resend_by_a_new_client_with_the_same_id_has_its_replayed_copy_recognised(broker):
    a, b = unique_user("reload-a"), unique_user("reload-b")
    bob = await login(broker.url, b, "d")
    await bob.send(a, "before")
    first = await login(broker.url, a, "browser")
    seen = await first.next_delivery(WAIT)
    cid = first.new_client_msg_id()
    r = await first.send(b, "stored before", client_msg_id=cid)
    assert r.own_seq == 2
    await first.close()
    # A reload: a new instance resumes from the seq the app saved (before the copy) and sends
    # the unconfirmed message again with its id; written after the login.
    again = Client(broker.url, mint_token(a), device_id="browser", last_seq=seen.seq)
    ev = Events(again, "echo")
    echo = ev.wait("echo")
    resent = again.send_nowait(b, "stored before", client_msg_id=cid)
    await again.connect()
    r2 = await resent
    assert (r2.client_msg_id, r2.own_seq) == (cid, 0), "answered from the dedup window: no copy skipped"
    e = await echo
    assert (e.seq, e.client_msg_id, e.echo, e.outgoing, e.text) == (2, cid, True, True, "stored before")
    marker = await again.send(b, "marker")
    got = [await bob.next_delivery(WAIT) for _ in range(2)]  # bob's seq 1 is the copy of his own "before"
    assert [(d.seq, d.text) for d in got] == [(2, "stored before"), (3, "marker")], "delivered once"
    assert marker.own_seq == 3
    for c in (again, bob):
        await c.close()
