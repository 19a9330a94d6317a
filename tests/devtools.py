"""Headless Chromium driven over the DevTools protocol, for the tests that open the report.

`drive(script, profile)` starts Chromium with a fresh profile, connects to its page over the
DevTools websocket and awaits ``script(session)``; the session sends commands (`call`), evaluates
JavaScript (`value`) and keeps every event that arrived in between (`events`).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

CHROMIUM = Path("/usr/bin/chromium")


class Session:
    """One page's DevTools connection: commands, JavaScript values, and the events seen."""

    def __init__(self, ws: Any):
        self._ws = ws
        self._ids = iter(range(1, 10_000))
        self.events: list[dict] = []

    async def call(self, method: str, **params) -> dict:
        """Send a command and return its result; events that arrive first are kept in `events`."""
        i = next(self._ids)
        await self._ws.send_json({"id": i, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self._ws.receive_json(), 60)
            if msg.get("id") == i:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    async def value(self, expr: str) -> Any:
        """The value of a JavaScript expression on the page (an exception fails the test)."""
        res = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        assert "exceptionDetails" not in res, (expr, res["exceptionDetails"])
        return res["result"].get("value")

    async def drain(self, quiet: float = 0.2) -> None:
        """Keep the events that arrive until none has for `quiet` seconds."""
        while True:
            try:
                self.events.append(await asyncio.wait_for(self._ws.receive_json(), quiet))
            except asyncio.TimeoutError:
                return


def drive(script: Callable[[Session], Awaitable[Any]], profile: Path, args: Sequence[str] = ()) -> Any:
    """Start headless Chromium (fresh `profile`, extra `args`), run `script` on its page, stop it."""
    import aiohttp

    proc = subprocess.Popen([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", *args, "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            assert time.time() < deadline and proc.poll() is None, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])

        async def run() -> Any:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    target = next(t for t in await r.json() if t["type"] == "page")
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    return await script(Session(ws))

        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
