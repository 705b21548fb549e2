"""Drives the dashboard in headless Chromium over the DevTools protocol (with `websockets`):
opens URL with TOKEN, clicks the "Set…" of DEVICE's POINT, answers the prompt with VALUE and
accepts the confirmation, then waits for the page's answer.

    dashboard_write.py URL TOKEN DEVICE POINT VALUE

Prints one JSON line: the confirmation the page asked, and the answer it showed."""
import asyncio
import itertools
import json
import re
import subprocess
import sys
import tempfile

from websockets.asyncio.client import connect

PATIENCE = 60


async def main(url, token, device, point, value):
    profile = tempfile.mkdtemp()
    chromium = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in chromium.stderr:
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                break
        else:
            raise SystemExit("chromium did not open its DevTools port")
        async with connect(found.group(1), max_size=None) as browser:
            ids = itertools.count(1)

            async def call(method, session=None, **params):
                id_ = next(ids)
                message = {"id": id_, "method": method, "params": params}
                if session:
                    message["sessionId"] = session
                await browser.send(json.dumps(message))
                while True:
                    answer = json.loads(await browser.recv())
                    if answer.get("id") == id_:
                        if "error" in answer:
                            raise RuntimeError(f"{method}: {answer['error']}")
                        return answer["result"]

            target = (await call("Target.createTarget", url=url))["targetId"]
            session = (await call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]

            async def evaluate(expression):
                result = await call("Runtime.evaluate", session, expression=expression,
                                    returnByValue=True, awaitPromise=True)
                if "exceptionDetails" in result:
                    raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
                return result["result"].get("value")

            async def until(expression):
                # While the page loads or reloads, its context may be gone: not true yet.
                deadline = asyncio.get_running_loop().time() + PATIENCE
                while asyncio.get_running_loop().time() < deadline:
                    try:
                        value = await evaluate(expression)
                    except RuntimeError:
                        value = None
                    if value:
                        return value
                    await asyncio.sleep(0.1)
                raise SystemExit(f"never true: {expression}")

            # The page asks for the token on a 401; give it the way a user's login form does,
            # once the gateway's page (not the blank one before it) has loaded.
            await until(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")
            await evaluate(f"localStorage.setItem('cairn-token', {json.dumps(token)}); location.reload(); true")
            button = f"document.querySelector('button.set[data-device={json.dumps(device)}][data-point={json.dumps(point)}]')"
            await until(f"!!{button}")
            await evaluate(f"window.prompt = () => {json.dumps(value)};"
                           "window.confirm = (m) => { window.confirmed = m; return true; };"
                           f"{button}.click(); true")
            answer = await until(f"(t => t && t !== 'writing…' && t)({button}.parentElement.querySelector('.answer').textContent)")
            confirmed = await evaluate("window.confirmed")
            print(json.dumps({"confirmed": confirmed, "answer": answer}))
    finally:
        chromium.kill()
        chromium.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
