"""The live-caption page: headless Chromium (Debian's, driven by Playwright) with a fake
microphone playing a WAV, against a running daemon with a browser microphone room; and its
WebSockets given bad input with aiohttp's client.

One daemon (tiny.en, a real Mosquitto, one ``browser`` room, a bearer token) serves the
module. Each bad input is followed by a good one, to show nothing else was disturbed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from tests.helpers import Daemon, Mosquitto, Subscriber, free_port, normalize, speak, wer, write_config

SENTENCE = "Please turn on the kitchen lights."
TOKEN = "page-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Site:
    url: str  # http://127.0.0.1:<port>
    folder: Path
    mqtt: Subscriber


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("captions")
    broker = Mosquitto(folder / "broker")
    broker.start()
    port, prefix = free_port(), f"rs-{uuid.uuid4().hex[:8]}"
    (folder / "token").write_text(TOKEN)
    extra = f'[http]\nenabled = true\nport = {port}\ntoken_file = "token"\n'
    rooms = '[[rooms]]\nname = "browser"\nsource = { type = "browser" }\n'
    config = write_config(folder / "c.toml", broker.port, prefix, rooms, extra)
    mqtt = Subscriber(broker.port, f"{prefix}/+/utterance", f"{prefix}-sub")
    daemon = Daemon(config)
    try:
        daemon.wait_log("ready", timeout_s=120)
        yield Site(f"http://127.0.0.1:{port}", folder, mqtt)
        assert daemon.terminate() == 0
    finally:
        mqtt.close()
        daemon.kill()
        broker.stop()


def ws_url(site: Site, path: str, token: str = TOKEN) -> str:
    return f"{site.url.replace('http', 'ws', 1)}{path}{'&' if '?' in path else '?'}token={token}"


async def receive_until(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout_s: float = 30) -> dict[str, object]:
    """Events until the first of ``kind`` (status and partial events come in between)."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await ws.receive_json()
            if event["type"] == kind:
                return dict(event)


async def receive_each(ws: aiohttp.ClientWebSocketResponse, *kinds: str) -> dict[str, dict[str, object]]:
    """The first event of each kind, in whatever order they come (a command's response is
    sent at once, the state change it causes through the event queue)."""
    seen: dict[str, dict[str, object]] = {}
    async with asyncio.timeout(30):
        while len(seen) < len(kinds):
            event = await ws.receive_json()
            if event["type"] in kinds:
                seen.setdefault(event["type"], dict(event))
    return seen


def utterances(site: Site, count: int) -> list[dict[str, object]]:
    return [json.loads(p) for p in site.mqtt.wait_for("/browser/utterance", count, timeout_s=90)]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)")
def test_the_spoken_sentence_appears_on_the_page(site: Site) -> None:
    from playwright.sync_api import sync_playwright

    audio = np.concatenate([np.zeros(16000, np.float32), speak(SENTENCE), np.zeros(48000, np.float32)])
    wav = site.folder / "mic.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    speech_end_s = len(audio) / 16000 - 3.0
    before = len(site.mqtt.payloads("/browser/utterance"))
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", "--disable-sync", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(f"{site.url}/?token={TOKEN}")
            page.wait_for_function("document.getElementById('status').textContent.includes('whisper-tiny.en')")
            started = page.evaluate("Date.now()")
            page.click("#micbutton")
            line = page.locator("section[data-room=browser] .finals .line").first
            line.wait_for(timeout=90_000)
            shown = page.evaluate("Date.now()")
            text = line.text_content() or ""
            screenshot = os.environ.get("ROOMSCRIBE_SCREENSHOT")  # docs/caption-page.png is made this way
            page.screenshot(path=screenshot or str(site.folder / "page.png"))
        finally:
            browser.close()
    assert wer([normalize(SENTENCE)], [normalize(text)]) <= 0.2, text
    published = utterances(site, before + 1)[before]
    assert published["text"] == text  # the page shows what MQTT subscribers got
    lag_s = (shown - started) / 1000 - speech_end_s
    print(f"caption lag: {lag_s:.2f} s from the end of speech to the line on the page")


def test_page_commands_and_garbage(site: Site) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(site, "/ws")) as ws:
            hello = await receive_until(ws, "hello")
            assert hello["mic_rooms"] == ["browser"] and hello["model"] == "whisper-tiny.en"
            for garbage, says in [("{not json", "malformed JSON"), ("[1, 2]", "JSON object"),
                                  ('{"command": "transcribe", "path": "/etc"}', "not available"),
                                  ('{"command": "pause", "room": "attic"}', "no room named")]:  # fmt: skip
                await ws.send_str(garbage)
                answer = await receive_until(ws, "response")
                assert answer["status"] == "error" and says in str(answer["error"]), answer
            await ws.send_bytes(b"\x00\x01")
            assert "binary" in str((await receive_until(ws, "error"))["error"])
            await ws.send_json({"command": "pause", "room": "browser", "transaction": "t1"})
            seen = await receive_each(ws, "state", "response")
            assert seen["state"]["room"] == "browser" and seen["state"]["paused"] is True
            assert seen["response"]["status"] == "ok" and seen["response"]["transaction"] == "t1"
            await ws.send_json({"command": "resume", "room": "browser"})
            assert (await receive_each(ws, "state", "response"))["state"]["paused"] is False
            await ws.send_json({"command": "clear_cache"})
            assert (await receive_until(ws, "response"))["status"] == "ok"

    asyncio.run(run())


def test_sockets_refuse_the_wrong_token_origin_and_room(site: Site) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url(site, "/ws", token="wrong"))
            assert refused.value.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url(site, "/ws"), origin="https://evil.example")
            assert refused.value.status == 403
            async with http.ws_connect(ws_url(site, "/ws/mic/attic")) as ws:
                assert "no browser microphone room" in str((await ws.receive_json())["error"])
                await ws.receive()
                assert ws.close_code == 4404
            async with http.get(f"{site.url}/") as page:  # the page itself needs no token
                assert page.status == 200 and "roomscribe" in await page.text()

    asyncio.run(run())


@pytest.mark.slow
def test_a_microphone_that_disconnects_mid_sentence_loses_nothing(site: Site) -> None:
    """Speech sent at 48 kHz with no silence after it, then the socket closes: the VAD still
    gets the end of the utterance, and MQTT gets its text."""
    import soxr

    before = len(site.mqtt.payloads("/browser/utterance"))
    audio = np.concatenate([np.zeros(8000, np.float32), speak(SENTENCE)])
    pcm = (np.clip(soxr.resample(audio, 16000, 48000), -1, 1) * 32767).astype("<i2").tobytes()

    async def run() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(site, "/ws/mic/browser?rate=48000")) as ws:
            await ws.send_str("hello")  # garbage first: answered, the socket stays
            assert "binary" in str((await ws.receive_json())["error"])
            await ws.send_bytes(b"\x00\x01\x02")
            assert "even number" in str((await ws.receive_json())["error"])
            for start in range(0, len(pcm), 48000):  # 500 ms at 48 kHz
                await ws.send_bytes(pcm[start : start + 48000])

    asyncio.run(run())
    published = utterances(site, before + 1)[before]
    assert wer([normalize(SENTENCE)], [normalize(str(published["text"]))]) <= 0.2, published
