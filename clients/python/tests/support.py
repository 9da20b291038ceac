"""Test harness: the real ringpost broker (target/debug/ringpost, or $RINGPOST_BIN) on port 0
with a per-test config, as tests/support/mod.rs does for the Rust tests; HS256 tokens minted
here; a TCP proxy for network faults, a WebSocket->TCP bridge (the broker has no WebSocket
listener yet) and a raw TCP server for playing a misbehaving peer."""

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
        self.proc = None
        self._spawn()

    def _spawn(self) -> None:
        d = self.dir
        config = d / "ringpost.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\nshards = {self.shards}\nshutdown_grace = "5s"\n'
            # Own ports for WebSocket too (tests run brokers side by side); own-send sync off
            # until the client presents a user's own sends (echoes).
            'ws_listen = "127.0.0.1:0"\nown_send_sync = false\n'
            f'[storage]\ndata_dir = "{d}/data"\nsegment_size = "4MiB"\n'
            f'[auth]\nsecret_file = "{d}/auth.secret"\n'
            f"[limits]\n{self.limits}\n"
        )
        env = dict(os.environ, RINGPOST_AUTH_SECRET=SECRET, RUST_LOG="info")
        with open(d / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen([BROKER_BIN, "--config", str(config)], stdout=subprocess.PIPE, stderr=err, env=env)
        line = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline().decode()), daemon=True)
        reader.start()
        reader.join(WAIT)
        if not line or not line[0].startswith("ringpost listening on "):
            self.proc.kill()
            raise RuntimeError(f"broker did not start: {line!r}\n{self.stderr()}")
        # Keep draining stdout so the broker never blocks on it.
        threading.Thread(target=lambda out=self.proc.stdout: [None for _ in out], daemon=True).start()
        self.addr = line[0].split()[3]
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.url = f"tcp://{self.addr}"

    def stderr(self) -> str:
        try:
            return (self.dir / "stderr.log").read_text()
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

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

    async def start(self) -> "Proxy":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        return self

    async def _accept(self, cr, cw):
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = (cw, uw)
        self._links.add(link)

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

        await asyncio.gather(pump(cr, uw, False), pump(ur, cw, True))

    def cut_all(self) -> None:
        for cw, uw in list(self._links):
            cw.transport.abort()
            uw.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        self.cut_all()
        self.server.close()


class WsBridge:
    """A WebSocket server on 127.0.0.1:0 path /ws relaying each connection to the broker over TCP."""

    def __init__(self, broker_port: int):
        self.broker_port = broker_port
        self.conns = set()

    async def start(self) -> "WsBridge":
        from websockets.asyncio.server import serve

        self.server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def _handle(self, ws):
        self.conns.add(ws)
        r, w = await asyncio.open_connection("127.0.0.1", self.broker_port)

        async def down():
            try:
                while True:
                    (n,) = struct.unpack("<I", await r.readexactly(4))
                    await ws.send(await r.readexactly(n))
            except Exception:
                await ws.close()

        task = asyncio.create_task(down())
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    await ws.close(1003, "binary frames only")
                    break
                w.write(prefixed(msg))
        except Exception:
            pass
        finally:
            task.cancel()
            w.close()
            self.conns.discard(ws)

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


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


__all__ = ["Broker", "Events", "Proxy", "WsBridge", "WAIT", "mint_token", "prefixed", "raw_server", "run",
           "signal", "unique_user"]
