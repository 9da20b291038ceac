"""Test harness: the real ringpost broker (target/debug/ringpost, or $RINGPOST_BIN) on port 0
with a per-test config, as tests/support/mod.rs does for the Rust tests; HS256 tokens minted
here; a TCP proxy for network faults (on either of the broker's ports) and a raw TCP server for
playing a misbehaving peer."""

import asyncio
import base64
import functools
import hashlib
import hmac
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SECRET = "py-client-test-secret"
ROOT = Path(__file__).resolve().parents[3]
BROKER_BIN = os.environ.get("RINGPOST_BIN", str(ROOT / "target" / "debug" / "ringpost"))
WAIT = 10.0  # upper bound for one expected event on a loaded 2-core CI box

_users = itertools.count(1)


def unique_user(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_users)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_token(user: str, ttl: int = 3600, secret: str = SECRET) -> str:
    """An HS256 JWT with ``sub`` = user and ``exp`` = now + ttl (negative: already expired)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": user, "exp": int(time.time()) + ttl}).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


def run(coro_fn):
    """Runs an async test function with asyncio.run (no plugin needed)."""

    @functools.wraps(coro_fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(coro_fn(*args, **kwargs), 60))

    return wrapper


class Broker:
    def __init__(self, shards: int = 2, limits: str = ""):
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-py-"))
        self.shards = shards
        self.limits = limits
        self.port = 0
        self.ws_port = 0
        self.proc = None
        self._spawn()

    def _spawn(self) -> None:
        d = self.dir
        config = d / "ringpost.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\nshards = {self.shards}\nshutdown_grace = "5s"\n'
            # Own ports for WebSocket too (tests run brokers side by side), the same again on a
            # restart. Own-send sync stays on (the default): a user's 1:1 sends reach the user's
            # other devices (the sending connection gets SendAck.own_seq instead), group sends
            # their senders as echoes.
            f'ws_listen = "127.0.0.1:{self.ws_port}"\n'
            f'[storage]\ndata_dir = "{d}/data"\nsegment_size = "4MiB"\n'
            f'[auth]\nsecret_file = "{d}/auth.secret"\n'
            f"[limits]\n{self.limits}\n"
            # No admin listener: its default port would clash between brokers run side by side.
            '[admin]\nlisten = ""\n'
        )
        env = dict(os.environ, RINGPOST_AUTH_SECRET=SECRET, RUST_LOG="info")
        with open(d / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen([BROKER_BIN, "--config", str(config)], stdout=subprocess.PIPE, stderr=err, env=env)
        # The first line names the TCP address, the second the WebSocket one.
        line = []
        reader = threading.Thread(target=lambda: line.extend(self.proc.stdout.readline().decode() for _ in range(2)), daemon=True)
        reader.start()
        reader.join(WAIT)
        if (len(line) < 2 or not line[0].startswith("ringpost listening on ")
                or not line[1].startswith("ringpost websocket on ")):
            self.proc.kill()
            raise RuntimeError(f"broker did not start: {line!r}\n{self.stderr()}")
        # Keep draining stdout so the broker never blocks on it.
        threading.Thread(target=lambda out=self.proc.stdout: [None for _ in out], daemon=True).start()
        self.addr = line[0].split()[3]
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.url = f"tcp://{self.addr}"
        self.ws_addr = line[1].split()[3]
        self.ws_port = int(self.ws_addr.rsplit(":", 1)[1])
        self.ws_url = f"ws://{self.ws_addr}/ws"

    def stderr(self) -> str:
        try:
            return (self.dir / "stderr.log").read_text()
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def freeze(self) -> None:
        """SIGSTOP, returned once every thread of the broker is stopped (/proc/PID/task/TID/stat
        in state T): kill(2) returns before the other threads have taken the stop, so a frame
        written right after it could still be read."""
        pid = self.proc.pid
        self.proc.send_signal(signal.SIGSTOP)

        def stopped() -> bool:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
                if stat[stat.rindex(")") + 2] not in "tT":
                    return False
            return True

        deadline = time.monotonic() + 10
        while not stopped():
            if time.monotonic() > deadline:
                raise AssertionError(f"broker {pid} did not stop within 10 s of SIGSTOP")
            await asyncio.sleep(0.001)

    def kill(self) -> None:
        """SIGKILL (a crash); the data directory stays for restart()."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Starts again over the same data directory, on the same port."""
        self._spawn()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def prefixed(frame: bytes) -> bytes:
    return struct.pack("<I", len(frame)) + frame


class Proxy:
    """A TCP proxy on 127.0.0.1:0 to the broker that can swallow the broker's bytes or cut links."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.swallow_downstream = False
        self._links = set()
        self._unlinked = asyncio.Event()
        self._unlinked.set()

    async def start(self) -> "Proxy":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        return self

    async def _accept(self, cr, cw):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the broker is down (a test killed it): the client sees a close
            cw.close()
            return
        link = (cw, uw)
        self._links.add(link)
        self._unlinked.clear()

        async def pump(r, w, downstream):
            try:
                while data := await r.read(65536):
                    if not (downstream and self.swallow_downstream):
                        w.write(data)
            except (ConnectionError, OSError):
                pass
            finally:
                cw.close()
                uw.close()
                self._links.discard(link)
                if not self._links:
                    self._unlinked.set()

        await asyncio.gather(pump(cr, uw, False), pump(ur, cw, True))

    async def unlinked(self) -> None:
        """Returns once no link is open: after a broker's kill, every byte it had written (an
        ack still in its socket buffer included) has reached the proxy and met the swallow
        setting of that moment."""
        await asyncio.wait_for(self._unlinked.wait(), 10.0)

    def cut_all(self) -> None:
        for cw, uw in list(self._links):
            cw.transport.abort()
            uw.transport.abort()
        self._links.clear()
        self._unlinked.set()

    async def close(self) -> None:
        self.cut_all()
        self.server.close()


async def raw_server(on_connection):
    """A TCP server on 127.0.0.1:0 calling on_connection(reader, writer, index) per client."""
    counter = itertools.count()

    async def handle(r, w):
        try:
            await on_connection(r, w, next(counter))
        except (ConnectionError, OSError):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.url = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    return server


# The broker's owner function (src/shard/routing.rs): FNV-1a 64 then the SplitMix64 finaliser;
# groups hash 0xFF ++ id. Pinned by the Rust golden values in test_routing.py.
_MASK = (1 << 64) - 1


def _fnv(h: int, data: bytes) -> int:
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _MASK
    return h


def _finish_hash(h: int) -> int:
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


def stable_hash(user_id: str) -> int:
    return _finish_hash(_fnv(0xCBF29CE484222325, user_id.encode()))


def stable_group_hash(group_id: str) -> int:
    return _finish_hash(_fnv(_fnv(0xCBF29CE484222325, b"\xff"), group_id.encode()))


def owner(user_id: str, shards: int) -> int:
    return stable_hash(user_id) % shards


def group_owner(group_id: str, shards: int) -> int:
    return stable_group_hash(group_id) % shards


def name_on(base: str, shard: int, own) -> str:
    """The first of base-0, base-1, ... for which own(name) == shard."""
    i = 0
    while own(f"{base}-{i}") != shard:
        i += 1
    return f"{base}-{i}"


class Events:
    """Records a client's events and lets a test wait for one."""

    def __init__(self, client, *names):
        self.log = {n: [] for n in names}
        self._waiters = []
        for n in names:
            client.on(n, functools.partial(self._record, n))

    def _record(self, name, value):
        self.log[name].append(value)
        for w in list(self._waiters):
            wname, pred, fut = w
            if wname == name and not fut.done() and pred(value):
                fut.set_result(value)
                self._waiters.remove(w)

    def wait(self, name, pred=lambda v: True, timeout=WAIT):
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((name, pred, fut))
        return asyncio.wait_for(fut, timeout)


__all__ = ["Broker", "Events", "Proxy", "WAIT", "mint_token", "owner", "group_owner", "name_on", "prefixed",
           "raw_server", "run", "signal", "unique_user"]
