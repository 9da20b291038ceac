"""The README's echo bot, run for real as a process against the broker."""

import asyncio
import os
import sys
from pathlib import Path

from ringpost_client import Client
from support import WAIT, mint_token, run, unique_user

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "echo_bot.py"


@run
async def test_the_echo_bot_echoes_and_resumes_after_a_restart(broker, tmp_path):
    bot_user, me = unique_user("echo"), unique_user("human")
    env = dict(os.environ, RINGPOST_URL=broker.url, RINGPOST_TOKEN=mint_token(bot_user),
               ECHO_STATE=str(tmp_path / "seq"), PYTHONPATH=os.pathsep.join(sys.path))

    async def start_bot():
        p = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLE), env=env, stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(p.stdout.readline(), WAIT)
        assert line.decode().strip() == f"echo bot online as {bot_user}"
        return p

    bot = await start_bot()
    human = Client(broker.url, mint_token(me), device_id="d")
    await human.connect()
    await human.send(bot_user, "hello bot")
    reply = await human.next_delivery(WAIT)
    assert (reply.from_user, reply.text) == (bot_user, "echo: hello bot")

    # The bot persists its seq right after its SendAck, which races with our Deliver; the file
    # is the only signal from outside the process.
    state = tmp_path / "seq"
    for _ in range(int(WAIT / 0.01)):
        if state.exists() and state.read_text() == "1":
            break
        await asyncio.sleep(0.01)
    assert state.read_text() == "1"
    bot.terminate()
    await bot.wait()
    await human.send(bot_user, "are you there?")  # waits in the bot's inbox
    bot = await start_bot()
    reply = await human.next_delivery(WAIT)
    assert reply.text == "echo: are you there?"  # and not "hello bot" again
    await human.send(bot_user, "third")
    assert (await human.next_delivery(WAIT)).text == "echo: third"

    # In a group the bot answers in the group; the group's creation is no message to answer.
    group = unique_user("bots")
    await human.create_group(group, [bot_user])
    created = await human.next_delivery(WAIT)
    assert (created.kind_name, created.outgoing) == ("GroupCreated", True)
    await human.send_to_group(group, "hi all")
    reply = await human.next_delivery(WAIT)
    assert (reply.group_id, reply.from_user, reply.text) == (group, bot_user, "echo: hi all")
    bot.terminate()
    await bot.wait()
    await human.close()

    # The bot's whole stream, read by another device: each message once, and the bot never
    # answered what it sent itself (the broker does not send a reply's copy back to the
    # connection that sent it, but after a restart from the saved seq the copies after it do
    # come back, as outgoing entries of an earlier run).
    audit = Client(broker.url, mint_token(bot_user), device_id="audit")
    await audit.connect()
    entries = [await audit.next_delivery(WAIT) for _ in range(audit.login.head_seq)]
    assert [(d.outgoing, d.text) for d in entries if d.is_message] == [
        (False, "hello bot"), (True, "echo: hello bot"), (False, "are you there?"), (True, "echo: are you there?"),
        (False, "third"), (True, "echo: third"), (False, "hi all"), (True, "echo: hi all")]
    assert audit.login.head_seq == 9  # those 8 and the group's creation
    await audit.close()
