"""Login against the real broker: LoginOk, and refusals that stop reconnecting."""

import asyncio

import pytest

from ringpost_client import Backoff, Client, ClientClosed, Code, RingpostError, code_name
from support import Events, mint_token, run, unique_user


@run
async def test_login_ok_names_the_user_and_its_shard(broker):
    user = unique_user("alice")
    c = Client(broker.url, mint_token(user), device_id="laptop")
    ev = Events(c, "state")
    info = await c.connect()
    assert (info.user_id, info.head_seq, info.gap, info.heartbeat_ms) == (user, 0, False, 30000)
    assert 0 <= info.shard < broker.shards
    await c.close()
    assert [s["state"] for s in ev.log["state"]] == ["connecting", "online", "closed"]


@pytest.mark.parametrize(
    "token,code",
    [
        (lambda: mint_token("mallory", secret="not-the-secret"), Code.AUTH_FAILED),
        (lambda: "definitely.not.ajwt", Code.AUTH_FAILED),
        (lambda: mint_token("late", ttl=-3600), Code.TOKEN_EXPIRED),
    ],
    ids=["bad-signature", "not-a-jwt", "expired"],
)
@run
async def test_login_refused_raises_the_code_and_stops(broker, token, code):
    c = Client(broker.url, token(), backoff=Backoff(0.01, 0.01))
    ev = Events(c, "retry", "state")
    with pytest.raises(RingpostError) as e:
        await c.connect()
    assert e.value.code == code
    assert e.value.code_name == code_name(code)
    assert str(e.value).startswith(f"{e.value.code_name} ({code})")
    assert c.state == "closed" and ev.log["retry"] == []
    assert c.close_error is e.value
    with pytest.raises(ClientClosed):
        await c.send("bob", "x")


@run
async def test_a_token_function_is_called_before_the_login(broker):
    user = unique_user("rotating")
    calls = []

    async def token():
        calls.append(1)
        return mint_token(user)

    async with Client(broker.url, token, device_id="d") as c:
        assert c.login.user_id == user
    assert len(calls) == 1


@run
async def test_same_device_id_replaces_the_first_connection_which_stops(broker):
    user = unique_user("twin")
    first = Client(broker.url, mint_token(user), device_id="phone")
    await first.connect()
    ev = Events(first, "state")
    closed = ev.wait("state", lambda s: s["state"] == "closed")
    second = Client(broker.url, mint_token(user), device_id="phone")
    await second.connect()
    s = await closed
    assert s["error"].code == Code.SESSION_REPLACED
    assert second.state == "online"
    await second.close()


@run
async def test_logout_gets_logged_out_and_closes(broker):
    c = Client(broker.url, mint_token(unique_user("leaver")), device_id="d")
    await c.connect()
    ev = Events(c, "goaway")
    await asyncio.wait_for(c.logout(), 5)
    assert [g["code_name"] for g in ev.log["goaway"]] == ["LOGGED_OUT"]
    assert c.state == "closed"
