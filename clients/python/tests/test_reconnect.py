"""Reconnect: the broker killed and restarted, an ack lost in transit, a frozen broker found by
heartbeats, a graceful shutdown. Unacked sends are re-sent with the same client_msg_id and the
recipient sees each message once."""

import asyncio
import signal

from ringpost_client import Backoff, Client, Code
from support import WAIT, Broker, Events, Proxy, mint_token, run, unique_user


def fast(**kw):
    return dict(backoff=Backoff(0.02, 0.2), login_timeout=3.0, **kw)


@run
async def test_broker_killed_and_restarted_resends_the_unacked_message_once(broker):
    a, b = unique_user("alice"), unique_user("bob")
    logins = []
    alice = Client(broker.url, lambda: (logins.append(1), mint_token(a))[1], device_id="d", **fast())
    bob = Client(broker.url, mint_token(b), device_id="d", **fast())
    await alice.connect()
    await bob.connect()
    ea, eb = Events(alice, "state", "sent"), Events(bob, "state", "login")
    await alice.send(b, "before")
    assert (await bob.next_delivery(WAIT)).text == "before"

    await broker.freeze()  # frozen: the next Send is written and never read
    written = ea.wait("sent", lambda s: s["attempt"] == 1)
    pending = alice.send_nowait(b, "during the outage")
    cid = (await written)["client_msg_id"]
    down = [ea.wait("state", lambda s: s["state"] == "reconnecting"), eb.wait("state", lambda s: s["state"] == "reconnecting")]
    broker.kill()
    await asyncio.gather(*down)
    assert alice.pending_sends == 1
    # Asking for the next delivery marks "before" processed, so bob resumes after seq 1.
    during = asyncio.ensure_future(bob.next_delivery(WAIT))
    resent = ea.wait("sent", lambda s: s["attempt"] == 2)
    bob_back = eb.wait("login")
    broker.restart()
    assert (await resent)["client_msg_id"] == cid
    assert (await asyncio.wait_for(pending, WAIT)).client_msg_id == cid
    assert (await bob_back).resumed_from == 1
    assert len(logins) >= 2
    d = await during
    assert (d.seq, d.text, d.client_msg_id) == (2, "during the outage", cid)
    await alice.send(b, "marker")
    m = await bob.next_delivery(WAIT)
    assert (m.seq, m.text) == (3, "marker")
    await alice.close()
    await bob.close()


@run
async def test_an_ack_lost_in_transit_is_answered_from_dedup_not_delivered_twice(broker):
    proxy = await Proxy(broker.port).start()
    a, b = unique_user("alice"), unique_user("bob")
    alice = Client(proxy.url, mint_token(a), device_id="d", **fast())
    bob = Client(broker.url, mint_token(b), device_id="d", **fast())
    await alice.connect()
    await bob.connect()
    ea = Events(alice, "sent")
    proxy.swallow_downstream = True  # alice hears nothing from here on: her SendAck is lost
    pending = alice.send_nowait(b, "once only")
    first = await bob.next_delivery(WAIT)  # stored and delivered (and acked into the void)
    resent = ea.wait("sent", lambda s: s["attempt"] == 2)
    proxy.cut_all()
    proxy.swallow_downstream = False
    ack = await asyncio.wait_for(pending, WAIT)
    assert (await resent)["client_msg_id"] == ack.client_msg_id
    await alice.send(b, "marker")
    second = await bob.next_delivery(WAIT)
    assert [(first.seq, first.text, first.client_msg_id), (second.seq, second.text)] == [
        (1, "once only", ack.client_msg_id), (2, "marker")]
    await alice.close()
    await bob.close()
    await proxy.close()


@run
async def test_a_frozen_broker_is_noticed_by_heartbeats_and_the_client_comes_back():
    broker = Broker(shards=1)
    try:
        c = Client(broker.url, mint_token(unique_user("pinger")), device_id="d", heartbeat=0.2, **fast())
        await c.connect()
        ev = Events(c, "state")
        down = ev.wait("state", lambda s: s["state"] == "reconnecting")
        broker.signal(signal.SIGSTOP)
        assert "no answer to a ping within 200 ms" in str((await down)["error"])
        back = ev.wait("state", lambda s: s["state"] == "online")
        broker.signal(signal.SIGCONT)
        await back
        await c.close()
    finally:
        broker.stop()


@run
async def test_shutdown_goaway_is_transient_and_the_client_waits_for_the_broker(broker):
    c = Client(broker.url, mint_token(unique_user("patient")), device_id="d", **fast())
    await c.connect()
    ev = Events(c, "state", "goaway")
    goaway = ev.wait("goaway")
    down = ev.wait("state", lambda s: s["state"] == "reconnecting")
    broker.signal(signal.SIGTERM)
    assert (await goaway)["code"] == Code.SHUTDOWN
    assert (await down)["error"].code_name == "SHUTDOWN"
    assert await asyncio.get_running_loop().run_in_executor(None, broker.proc.wait) == 0
    back = ev.wait("state", lambda s: s["state"] == "online")
    broker.restart()
    await back
    await c.close()
