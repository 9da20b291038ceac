"""Echo bot: answers every message with the same text, 1:1 or in the group it came from.
Resumes where it left off after a restart.

    RINGPOST_URL=tcp://127.0.0.1:7070 RINGPOST_TOKEN="$(ringpost-tools token ... --user echo)" python echo_bot.py
"""

import asyncio
import os
from pathlib import Path

from ringpost_client import Client

STATE = Path(os.environ.get("ECHO_STATE", "echo-bot.seq"))  # last processed seq survives restarts


async def main() -> None:
    last = int(STATE.read_text()) if STATE.exists() else 0
    async with Client(os.environ["RINGPOST_URL"], os.environ["RINGPOST_TOKEN"], device_id="echo-bot", last_seq=last) as bot:
        print(f"echo bot online as {bot.login.user_id}", flush=True)
        async for msg in bot:  # each message counts as processed when the next one is asked for
            if msg.is_message and not msg.outgoing:  # not group events, not what the bot itself sent
                if msg.is_group:
                    await bot.send_to_group(msg.group_id, f"echo: {msg.text}")
                else:
                    await bot.send(msg.from_user, f"echo: {msg.text}")
            STATE.write_text(str(msg.seq))


if __name__ == "__main__":
    asyncio.run(main())
