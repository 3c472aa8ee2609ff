"""The studio page and its endpoints, as an editor meets them: the real `serve` command with an
API key on a loopback port, driven in headless Chromium (Playwright, Debian's /usr/bin/chromium)
from upload to exported FCPXML, and its cue, edit, media and event endpoints over plain HTTP.

The browser test takes the README's two screenshots, studio-upload.png and studio-editor.png:
into its temporary folder, or into docs/ with WHISPER_COREML_SCREENSHOTS=docs (so a test run
leaves the checkout clean). It skips, saying why, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from test_fcpxml import check_timing
from test_server import ROOT, Server, multipart

from whisper_coreml.server.studio import rules_dict
from whisper_coreml.subtitles import Cue, CueRules, check_cues
from whisper_coreml.timecode import FRAME_RATES

etree = pytest.importorskip("lxml.etree")

KEY = "studio-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIP = "en/jfk_inaugural_excerpt.flac"  # 11 s, three cues
SHORT = "en/arctic_a0010.wav"  # 3.6 s
CHROMIUM = Path(os.environ.get("WHISPER_COREML_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # float32, the same cues on every CPU: these tests are about editing cues, and `auto` is int8
    # on some CPUs, whose first JFK cue runs to 6.28 s instead of ending after "And so," at 1.08 s.
    server = Server(tmp_path_factory.mktemp("studio"), "--api-key", KEY, "--compute-type", "float32").start()
    try:
        yield server
    finally:
        server.stop()


def call(server: Server, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One request with the key (unless `headers` replace it); a dict body is sent as JSON."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    extra = {"Content-Type": "application/json"} if isinstance(body, dict | list) else {}
    return server.request(method, path, data, {**AUTH, **extra, **headers})


def submit(server: Server, clip: Path, **fields: str) -> dict[str, Any]:
    body, content_type = multipart(fields, clip.name, clip.read_bytes())
    status, _, reply = call(server, "POST", "/v1/jobs", body, **{"Content-Type": content_type})
    assert status == 202, reply
    job = json.loads(reply)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status, _, reply = call(server, "GET", f"/v1/jobs/{job['id']}")
        job = json.loads(reply)
        if job["status"] in ("done", "failed", "cancelled"):
            assert job["status"] == "done", job
            return job
        time.sleep(0.2)
    raise AssertionError("the job did not finish in 300 s")


@pytest.fixture(scope="module")
def job(server: Server, speech: Callable[[str], Path]) -> dict[str, Any]:
    """The JFK clip, done, its media kept as the page asks."""
    return submit(server, speech(CLIP), response_format="srt", keep_media="true")


def message(reply: bytes) -> str:
    text = json.loads(reply)["error"]["message"]
    assert "\n" not in text and "Traceback" not in text
    return text


def validate_fcpxml(document: str, shared: Path, version: str, fps: str) -> list[tuple[Fraction, Fraction]]:
    """DTD-valid at `version` and every time on the `fps` frame grid; the caption spans."""
    dtd = etree.DTD(str(shared / "fcpxml" / "dtd" / f"FCPXMLv{version.replace('.', '_')}.dtd"))
    assert dtd.validate(etree.fromstring(document.encode())), dtd.error_log.filter_from_errors()
    return check_timing(document, FRAME_RATES[fps])


# --- the endpoints -----------------------------------------------------------------------------


def test_cues_start_as_the_cli_writes_them_and_every_endpoint_needs_the_key(server: Server, job: dict) -> None:
    path = f"/v1/jobs/{job['id']}"
    for method, where in (("GET", "/cues"), ("PUT", "/cues"), ("DELETE", "/cues"), ("GET", "/export"), ("GET", "")):
        assert call(server, method, path + where, Authorization="Bearer wrong")[0] == 401, (method, where)
    assert call(server, "GET", "/v1/studio", Authorization="")[0] == 401
    assert call(server, "GET", "/v1/events", Authorization="")[0] == 401
    status, headers, page = server.request("GET", "/")  # the page itself asks for the key
    assert status == 200 and b"studio.js" in page and "default-src 'self'" in headers["content-security-policy"]
    assert server.request("GET", "/static/studio.js")[0] == 200

    status, _, reply = call(server, "GET", path + "/cues")
    state = json.loads(reply)
    assert status == 200 and state["revision"] == 0 and not state["edited"] and len(state["cues"]) >= 2
    assert state["rules"]["fps"] == "25" and state["rules"]["frame_duration"] == [1, 25]
    # untouched, an export is exactly the job's result (and so the CLI's file) in every format
    for fmt, result in (("srt", "srt"), ("vtt", "vtt"), ("fcpxml", "fcpxml"), ("itt", "itt"), ("txt", "text")):
        exported = call(server, "GET", f"{path}/export?format={fmt}")
        assert exported[0] == 200 and exported[1]["content-disposition"].endswith(f"jfk_inaugural_excerpt.{fmt}")
        assert exported[2] == call(server, "GET", f"{path}/result?format={result}")[2], fmt


def test_edits_are_checked_snapped_saved_and_exported_in_every_format(server: Server, job: dict, shared: Path) -> None:
    path = f"/v1/jobs/{job['id']}/cues"
    built = json.loads(call(server, "GET", path)[2])["cues"]
    good = [dict(c) for c in built]
    bad_edits = {
        "cue 1: start -1 s is negative": [{**good[0], "start": -1}],
        "cue 2: its text is empty": [good[0], {**good[1], "text": " \n "}],
        "cue 1: ends at 0.500 s, not after its start (1.000 s)": [{**good[0], "start": 1.0, "end": 0.5}],
        "cue 2: starts at 0.500 s, before cue 1 ends": [good[0], {**good[1], "start": 0.5}],
        "cue 1: shorter than one frame at 25 fps": [{**good[0], "start": 1.0, "end": 1.01}],
        "after the media ends (11.000 s)": [{**good[0], "end": 30.0}],
        "cue 1: start must be a number of seconds": [{**good[0], "start": "soon"}],
    }
    for expected, cues in bad_edits.items():
        status, _, reply = call(server, "PUT", path, {"revision": 0, "cues": cues})
        assert status == 400 and expected in message(reply), (expected, reply)
    assert call(server, "PUT", path, b"{not json", **{"Content-Type": "application/json"})[0] == 400
    assert "revision" in message(call(server, "PUT", path, {"cues": good})[2])

    # an off-grid time is snapped to the job's 25 fps frames; the edit is everywhere
    edited = [{**good[0], "text": "And so, my friends,", "end": good[0]["end"] + 0.0812}, *good[1:]]
    status, _, reply = call(server, "PUT", path, {"revision": 0, "cues": edited})
    state = json.loads(reply)
    assert status == 200 and state["revision"] == 1 and state["edited"]
    end = state["cues"][0]["end"]
    assert end == pytest.approx(good[0]["end"] + 0.08) and Fraction(end).limit_denominator(1000) * 25 % 1 == 0
    stale = call(server, "PUT", path, {"revision": 0, "cues": good})  # another tab's older copy
    assert stale[0] == 409 and "revision 1" in message(stale[2])

    export = f"/v1/jobs/{job['id']}/export"
    texts = {fmt: call(server, "GET", f"{export}?format={fmt}")[2].decode() for fmt in ("srt", "vtt", "txt", "itt")}
    assert all("And so, my friends," in text for text in texts.values()), texts
    assert re.search(r"00:00:00,000 --> 00:00:01,160\nAnd so, my friends,", texts["srt"])
    as_json = json.loads(call(server, "GET", f"{export}?format=json")[2])
    assert as_json["segments"][0]["text"].strip() == "And so, my friends," and as_json["segments"][0]["end"] == 1.16
    for version, fps in (("1.8", "25"), ("1.13", "29.97"), ("1.10", "23.976")):
        status, _, body = call(server, "GET", f"{export}?format=fcpxml&fps={fps}&fcpxml_version={version}")
        assert status == 200 and "And so, my friends," in body.decode()
        assert len(validate_fcpxml(body.decode(), shared, version, fps)) == len(good)
    assert call(server, "GET", f"{export}?format=doc")[0] == 400
    assert call(server, "GET", f"{export}?fps=12")[0] == 400

    reverted = json.loads(call(server, "DELETE", path)[2])
    assert reverted["revision"] == 0 and reverted["cues"] == built


def test_media_plays_with_range_requests_and_a_per_job_token(server: Server, job: dict) -> None:
    state = json.loads(call(server, "GET", f"/v1/jobs/{job['id']}/cues")[2])
    url = state["media"]
    assert url.startswith(f"/v1/jobs/{job['id']}/media?token=") and KEY not in url
    status, headers, body = server.request("GET", url, headers={"Range": "bytes=100-199"})
    assert status == 206 and len(body) == 100 and headers["content-range"].startswith("bytes 100-199/")
    assert headers["content-type"] == "audio/flac"
    bare = f"/v1/jobs/{job['id']}/media"
    assert server.request("GET", bare)[0] == 401
    assert server.request("GET", bare + "?token=" + "0" * 64)[0] == 401
    assert call(server, "GET", bare, Range="bytes=0-9")[0] == 206  # a script may send the header
    assert not list((server.data_dir / "uploads").iterdir())  # kept in media/, not among the uploads


def test_events_stream_the_job_list(server: Server, job: dict) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/v1/events", headers=AUTH)
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        event: dict[str, str] = {}
        while "event" not in event:  # the first block only sets the reconnection delay
            block = iter(lambda: response.readline().decode().rstrip("\n"), "")
            event = dict(line.split(": ", 1) for line in block)
        assert event["event"] == "jobs" and job["id"] in [j["id"] for j in json.loads(event["data"])]
    finally:
        connection.close()


# --- in the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set WHISPER_COREML_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_follow_edit_and_export_in_the_browser(
    server: Server, browser: Any, speech: Callable[[str], Path], shared: Path, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1360, "height": 820}, accept_downloads=True)
    page = context.new_page()
    shots = ROOT / "docs" if os.environ.get("WHISPER_COREML_SCREENSHOTS") == "docs" else tmp_path
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.set_default_timeout(60_000)
    page.goto(server.url + "/")

    # the page asks for the key once, then lists the jobs the server has
    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    page.wait_for_function("() => document.querySelector('#model-pill').textContent === 'tiny.en'")
    page.wait_for_selector("#conn.live")

    # two files at once; their progress arrives over the event stream
    done = page.locator(".job.done").count()  # jobs the other tests left
    page.set_input_files("#file-input", [speech(CLIP), speech(SHORT)])
    page.wait_for_selector(".job.running, .job.queued")
    page.wait_for_function(f"() => document.querySelectorAll('.job.done').length >= {done + 2}", timeout=240_000)
    jfk = page.locator(".job", has_text="jfk_inaugural_excerpt.flac").first
    assert jfk.locator(".state").inner_text().lower() == "done"
    page.screenshot(path=str(shots / "studio-upload.png"), clip={"x": 0, "y": 0, "width": 1360, "height": 560})

    page.reload()  # the queue is the server's: a reload shows it again, the key remembered
    page.wait_for_function(f"() => document.querySelectorAll('.job.done').length >= {done + 2}")
    page.locator(".job", has_text="jfk_inaugural_excerpt.flac").first.get_by_role("button", name="Edit cues").click()
    page.wait_for_selector(".cue")
    page.wait_for_function("() => document.querySelector('#player').readyState >= 1")
    assert page.evaluate("() => document.querySelector('#player').duration") == pytest.approx(11.0, abs=0.1)

    first = page.locator(".cue").nth(0)
    original = first.locator("textarea").input_value()
    end_before = first.locator("input.end").input_value()
    # a rule breach shows as it is typed, and undo takes the typing back
    first.locator("textarea").fill("And so, my fellow Americans and everyone listening tonight")
    assert "/42 chars" in first.locator(".breaches").inner_text()
    page.click("#undo")
    assert page.locator(".cue").nth(0).locator("textarea").input_value() == original
    assert page.locator(".cue").nth(0).locator(".breach").count() == 0

    page.locator(".cue").nth(0).locator("textarea").fill("And so, my friends,")
    for _ in range(2):
        page.locator(".cue").nth(0).locator('button[data-nudge="end+1"]').click()
    end_after = page.locator(".cue").nth(0).locator("input.end").input_value()
    assert (end_before, end_after) == ("00:00:01.080", "00:00:01.160")
    page.wait_for_selector("#save-state.ok")

    # clicking a cue seeks there, and the cue under the playhead is the highlighted one
    page.locator(".cue").nth(1).locator(".num").click()
    page.wait_for_selector(".cue.now >> nth=0")
    assert page.locator(".cue").nth(1).get_attribute("class").split().count("now") == 1
    assert page.evaluate("() => document.querySelector('#player').currentTime") == pytest.approx(1.36, abs=0.05)
    assert page.locator("#caption").inner_text().startswith("my fellow Americans")
    page.screenshot(path=str(shots / "studio-editor.png"))

    # export SRT and FCPXML 1.8 at 25 fps, through the page's own download links
    for chip in page.locator("#export-formats input").all():
        if chip.is_checked() != (chip.get_attribute("value") in ("srt", "fcpxml")):
            chip.locator("xpath=..").click()
    page.select_option("#export-version", "1.8")
    page.select_option("#export-fps", "25")
    downloads: list[Any] = []
    page.on("download", lambda download: downloads.append(download))
    page.click("#export")
    page.wait_for_function("() => document.querySelector('#toast').textContent.startsWith('Exported')")
    files = {}
    for download in downloads:
        target = tmp_path / download.suggested_filename
        download.save_as(target)
        files[target.suffix] = target.read_text(encoding="utf-8")
    assert set(files) == {".srt", ".fcpxml"}
    assert "00:00:00,000 --> 00:00:01,160\nAnd so, my friends," in files[".srt"]
    spans = validate_fcpxml(files[".fcpxml"], shared, "1.8", "25")
    assert spans[0] == (0, Fraction(29, 25)) and "And so, my friends," in files[".fcpxml"]

    # the page's inline checks find what subtitles.check_cues finds (at 25 fps, in frames)
    crafted = [(0, 10, "Short"), (11, 100, "A line far too long for any subtitle line to hold"), (101, 300, "x\ny\nz")]
    crafted += [(310, 330, "Fast talker says many words in very little time"), (331, 340, "Done.")]
    rules = CueRules()
    cues = [Cue(a / 25, z / 25, tuple(text.split("\n"))) for a, z, text in crafted]
    expected = {(v.index, v.rule) for v in check_cues(cues, rules) if v.rule != "one_word"}
    found = page.evaluate(
        "([cues, rules]) => cues.flatMap((c, k) => breaches(cues, k, rules).map((b) => [k, b.rule]))",
        [[{"start": a, "end": z, "text": text} for a, z, text in crafted], rules_dict(rules)],
    )
    assert {tuple(f) for f in found} == expected and len(expected) >= 5

    page.reload()  # saved on the server with the job
    page.wait_for_selector(".cue")
    assert page.locator(".cue").nth(0).locator("textarea").input_value() == "And so, my friends,"
    assert problems == []
    context.close()


def test_edits_and_media_survive_a_restart(server: Server, job: dict) -> None:
    path = f"/v1/jobs/{job['id']}/cues"
    state = json.loads(call(server, "GET", path)[2])
    cues = [{**state["cues"][0], "text": "Kept across a restart"}, *state["cues"][1:]]
    saved = json.loads(call(server, "PUT", path, {"revision": state["revision"], "cues": cues})[2])
    log = server.stop()
    assert "Traceback" not in log, log
    server.start()
    after = json.loads(call(server, "GET", path)[2])
    assert (after["revision"], after["cues"]) == (saved["revision"], saved["cues"])
    assert server.request("GET", after["media"], headers={"Range": "bytes=0-9"})[0] == 206
