"""Groups over the real broker (2 shards): the lifecycle with every refusal as a typed
GroupError, messages in one group order for members on different shards, the removal and join
boundaries, and a group send whose SendAck was lost, resent after a kill -9 restart and stored
once."""

import asyncio

import pytest

from ringpost_client import Backoff, Client, Code, EntryKind, GroupChange, GroupError, GroupMember, SendError
from support import WAIT, Broker, Events, Proxy, group_owner, mint_token, name_on, owner, run, unique_user

SHARDS = 2


def user_on(prefix: str, shard: int) -> str:
    return name_on(unique_user(prefix), shard, lambda n: owner(n, SHARDS))


def group_on(prefix: str, shard: int) -> str:
    return name_on(unique_user(prefix), shard, lambda g: group_owner(g, SHARDS))


@pytest.fixture
def gbroker():
    b = Broker(shards=SHARDS, limits="sends_per_sec = 100000")
    yield b
    b.stop()


async def login(broker, user, device="d", **kw) -> Client:
    c = Client(broker.url, mint_token(user), device_id=device, **kw)
    await c.connect()
    assert c.login.shard == owner(user, SHARDS), f"{user} is served by its owner shard"
    return c


async def entries(c: Client, n: int):
    return [await c.next_delivery(WAIT) for _ in range(n)]


def summary(d) -> str:
    group = f"#{d.group_id}@{d.group_seq}" if d.group_id else ""
    return f"{d.seq}:{d.kind_name}{group}:{d.from_user}{'>' if d.outgoing else ''}{'(echo)' if d.echo else ''}:{d.text}"


async def refused(aw):
    try:
        value = await aw
    except Exception as e:  # noqa: BLE001 - the test inspects what it got
        return e
    raise AssertionError(f"accepted: {value!r}")


@run
async def test_group_lifecycle_and_refusals_as_group_errors(gbroker):
    a, b, c = user_on("life-admin", 0), user_on("life-bob", 1), user_on("life-carol", 1)
    group = group_on("life", 1)
    alice, bob, carol = [await login(gbroker, u) for u in (a, b, c)]

    assert await alice.create_group(group, [b]) == GroupChange(group, 1)
    for cl, who in ((alice, a), (bob, b)):
        d = await cl.next_delivery(WAIT)
        assert (d.kind, d.kind_name, d.seq, d.group_seq, d.from_user, d.members) == (
            EntryKind.GroupCreated, "GroupCreated", 1, 1, a, (a, b)), "the creator comes first"
        assert d.outgoing == (who == a) and not d.echo, "a group event is never an echo"
        assert d.is_group and d.key == f"{group}#1"
    assert await bob.list_groups() == [group]

    e = await refused(bob.create_group(group))
    assert isinstance(e, GroupError)
    assert (e.code, e.code_name, e.op, e.group_id) == (Code.GROUP_EXISTS, "GROUP_EXISTS", "create", group)
    assert isinstance(e.request_id, int) and str(e).startswith("GROUP_EXISTS (601)")
    e = await refused(bob.add_members(group, [c]))
    assert (e.code, e.code_name, e.op) == (603, "NOT_GROUP_ADMIN", "add")
    assert (await refused(alice.create_group(""))).code_name == "INVALID_GROUP"
    assert (await refused(alice.leave_group(unique_user("no-such-group")))).code_name == "GROUP_NOT_FOUND"

    assert await alice.add_members(group, [c]) == GroupChange(group, 2)
    added = await carol.next_delivery(WAIT)
    assert (added.kind_name, added.seq, added.group_seq, added.members) == ("MembersAdded", 1, 2, (c,))
    assert (await bob.next_delivery(WAIT)).kind_name == "MembersAdded"
    assert (await refused(alice.add_members(group, [c]))).code_name == "ALREADY_A_MEMBER"

    everyone = tuple(GroupMember(u, u == a) for u in sorted((a, b, c)))
    page = await carol.group_info(group)
    assert (page.members, page.next_after, page.member_count) == (everyone, "", 3)
    first = await carol.group_info(group, limit=1)
    assert (first.members, first.next_after, first.member_count) == (everyone[:1], everyone[0].user_id, 3)
    second = await carol.group_info(group, after=first.next_after, limit=1)
    assert second.members == everyone[1:2]
    assert tuple(await carol.group_members(group, page_size=1)) == everyone

    assert await alice.remove_members(group, [b]) == GroupChange(group, 3)
    removed = await bob.next_delivery(WAIT)
    assert (removed.kind_name, removed.group_seq, removed.members) == ("MembersRemoved", 3, (b,))
    e = await refused(bob.send_to_group(group, "let me in"))
    assert isinstance(e, SendError)
    assert (e.code, e.code_name, e.group_id, e.to) == (Code.NOT_A_MEMBER, "NOT_A_MEMBER", group, "")
    assert (await refused(bob.group_info(group))).code_name == "NOT_A_MEMBER"
    assert await bob.list_groups() == []

    assert await carol.leave_group(group) == GroupChange(group, 4)
    assert [d.kind_name for d in await entries(alice, 3)] == ["MembersAdded", "MembersRemoved", "MemberLeft"]
    saw_removal, own = await entries(carol, 2)
    assert (saw_removal.kind_name, saw_removal.members) == ("MembersRemoved", (b,))
    assert (own.kind_name, own.from_user, own.outgoing) == ("MemberLeft", c, True)
    assert await carol.list_groups() == [] and await alice.list_groups() == [group]
    for cl in (alice, bob, carol):
        await cl.close()


@run
async def test_members_on_different_shards_see_one_group_order_each_message_once(gbroker):
    a, b = user_on("order-a", 0), user_on("order-b", 1)
    group = group_on("order", 1)  # owned by the shard alice is not on
    # deliver_echoes: the test looks at the whole stream, own messages included (flagged).
    alice = await login(gbroker, a, deliver_echoes=True)
    bob = await login(gbroker, b, deliver_echoes=True)
    await alice.create_group(group, [b])
    n = 15
    futs = []
    for i in range(n):  # both send at once, without waiting for each other's acks
        futs += [alice.send_to_group_nowait(group, f"a{i}"), bob.send_to_group_nowait(group, f"b{i}")]
    acks = await asyncio.wait_for(asyncio.gather(*futs), WAIT)
    assert (acks[0].to, acks[0].group_id) == ("", group)
    views = []
    for cl, me in ((alice, a), (bob, b)):
        got = await entries(cl, 1 + 2 * n)
        assert [d.seq for d in got] == list(range(1, 2 + 2 * n)), "gap-free stream"
        msgs = got[1:]
        assert [d.group_seq for d in msgs] == list(range(2, 2 + 2 * n)), "group_seq counts up by one"
        for d in msgs:
            assert (d.group_id, d.kind) == (group, EntryKind.Message)
            assert d.outgoing == d.echo == (d.from_user == me), summary(d)
        views.append([(d.group_seq, d.from_user, d.text) for d in msgs])
    assert views[0] == views[1], "both members see the same order"
    texts = [t for _, _, t in views[0]]
    for p in "ab":
        assert [t for t in texts if t[0] == p] == [f"{p}{i}" for i in range(n)], f"{p}'s messages once each, in send order"
    await alice.close()
    await bob.close()


@run
async def test_a_removed_member_gets_nothing_after_removal_an_added_one_nothing_before(gbroker):
    a, b, c = user_on("rm-admin", 0), user_on("rm-bob", 1), user_on("rm-carol", 1)
    group = group_on("boundary", 0)
    alice, bob, carol = [await login(gbroker, u) for u in (a, b, c)]
    await alice.create_group(group, [b])
    await alice.send_to_group(group, "before")
    assert (await alice.remove_members(group, [b])).group_seq == 3
    assert (await alice.add_members(group, [c])).group_seq == 4
    await alice.send_to_group(group, "after")
    # Carol shares bob's shard: once "after" reached her, the fan-out to that shard is done.
    got_c = await entries(carol, 2)
    assert [summary(d) for d in got_c] == [f"1:MembersAdded#{group}@4:{a}:", f"2:Message#{group}@5:{a}:after"]
    await alice.send(b, "marker")
    assert [summary(d) for d in await entries(bob, 4)] == [
        f"1:GroupCreated#{group}@1:{a}:", f"2:Message#{group}@2:{a}:before", f"3:MembersRemoved#{group}@3:{a}:",
        f"4:Message:{a}:marker"]
    # A new device of carol's replays her stream from the log: the same two entries.
    tablet = await login(gbroker, c, "tablet")
    assert [summary(d) for d in await entries(tablet, 2)] == [summary(d) for d in got_c]
    for cl in (alice, bob, carol, tablet):
        await cl.close()


@run
async def test_a_group_send_whose_ack_was_lost_is_resent_after_kill_9_and_stored_once(gbroker):
    proxy = await Proxy(gbroker.port).start()
    a, b = user_on("crash-a", 0), user_on("crash-b", 1)
    group = group_on("crash", 1)
    fast = dict(backoff=Backoff(0.02, 0.2), login_timeout=3.0)
    alice = Client(proxy.url, mint_token(a), device_id="d", **fast)
    bob = Client(gbroker.url, mint_token(b), device_id="d", **fast)
    await alice.connect()
    await bob.connect()
    ev = Events(alice, "sent")
    await alice.create_group(group, [b])
    assert (await bob.next_delivery(WAIT)).kind_name == "GroupCreated"

    proxy.swallow_downstream = True  # alice hears nothing from here on: her SendAck is lost
    pending = alice.send_to_group_nowait(group, "once only")
    first = await bob.next_delivery(WAIT)  # stored and fanned out (and acked into the void)
    assert first.text == "once only"
    resent = ev.wait("sent", lambda s: s["attempt"] == 2)
    gbroker.kill()  # SIGKILL
    # The ack may still sit in the dead broker's socket buffer: the kernel sends it after the
    # kill. Only once the proxy saw that link end has everything the broker wrote been swallowed.
    await proxy.unlinked()
    proxy.swallow_downstream = False
    gbroker.restart()  # same data directory, same port
    ack = await asyncio.wait_for(pending, WAIT)
    again = await resent
    assert (again["client_msg_id"], again["group_id"]) == (ack.client_msg_id, group)

    # The same client_msg_id from a fresh client of alice's is answered OK and not stored again.
    other = Client(gbroker.url, mint_token(a), device_id="other")
    await other.connect()
    r = await other.send_to_group(group, "once only", client_msg_id=ack.client_msg_id)
    assert (r.client_msg_id, r.group_id) == (ack.client_msg_id, group)
    await alice.send_to_group(group, "marker")
    m = await bob.next_delivery(WAIT)
    assert [(first.seq, first.group_seq), (m.seq, m.group_seq, m.text)] == [(2, 2), (3, 3, "marker")]
    fresh = Client(gbroker.url, mint_token(b), device_id="fresh")
    await fresh.connect()
    assert [(d.seq, d.group_seq, d.text) for d in await entries(fresh, 3)] == [(1, 1, ""), (2, 2, "once only"), (3, 3, "marker")]
    assert fresh.login.head_seq == 3
    for cl in (alice, bob, other, fresh):
        await cl.close()
    await proxy.close()
