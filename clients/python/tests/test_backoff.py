"""Backoff bounds, alone and as the client applies them to a broker that is not there."""

import asyncio
import socket

import pytest

from ringpost_client import Backoff, Client, ClientClosed, ConnectionLost
from support import Events, mint_token, run


@pytest.mark.parametrize("r", [0.0, 0.5, 0.999999])
def test_delays_double_up_to_max_each_in_half_to_full(r):
    b = Backoff(0.1, 1.0, rand=lambda: r)
    for hi in [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]:
        d = b.next()
        assert hi / 2 <= d <= hi
        assert d == pytest.approx(hi / 2 + r * hi / 2)
    b.reset()
    assert b.next() <= 0.1
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(0.5, 0.1)


@run
async def test_a_refused_connection_is_retried_with_growing_bounded_delays():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c = Client(f"tcp://127.0.0.1:{port}", mint_token("nobody"), backoff=Backoff(0.02, 0.08))
    ev = Events(c, "retry", "state")
    fifth = ev.wait("retry", lambda r: r["attempt"] == 5)
    connecting = asyncio.ensure_future(c.connect())
    await fifth
    assert c.state == "connecting"
    for i, r in enumerate(ev.log["retry"][:5]):
        hi = min(0.02 * 2**i, 0.08)
        assert hi / 2 <= r["delay"] <= hi, (i, r["delay"])
        assert isinstance(r["error"], ConnectionLost)
    await c.close()
    with pytest.raises(ClientClosed):
        await connecting
