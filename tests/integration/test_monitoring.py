"""Nightly runs that watch themselves: each run's record, the drift and structure rules, alerts posted to a
local webhook, the runs and structure_changes views, and the report's nights page.

The nights are lossless photos of a light grey surface with dark cracks of known length, scored by a hand-built
model whose mask is "dark pixels" (see test_score_geometry), so a structure whose cracks grew is known to have
grown, and a darkened night is known to be darker."""

import http.server
import json
import re
import threading
import time
import urllib.request

import numpy as np
import pytest
from helpers import SIZE, dark_line_segmenter, mask_card
from PIL import Image

from cracknet.errors import CracknetError
from cracknet.model.network import save_artifact
from cracknet.score import alerts
from cracknet.score.config import ScoreConfig
from cracknet.score.driver import run_scoring
from cracknet.table.query import run_query


def draw_night(folder, prefix: str, photos: int, cracks: int, seed: int, light: tuple = (0.55, 0.75),
               length: int = SIZE - 20) -> None:
    """``photos`` PNGs of a surface of brightness ``light``, each with ``cracks`` straight dark cracks 3 px wide
    and ``length`` px long."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(photos):
        img = rng.uniform(*light, (SIZE, SIZE))
        for c in range(cracks):
            row = 12 + c * 24
            img[row:row + 3, 10:10 + length] = 0.15
        Image.fromarray((np.repeat(img[..., None], 3, -1) * 255).astype(np.uint8)).save(folder / f"{prefix}-{i:02d}.png")


class Hook(http.server.BaseHTTPRequestHandler):
    """A local incoming webhook: records each JSON body; answers 500 to the first ``fail_first`` posts."""
    received: list = []
    fail_first = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.received.append(body)
        if self.path.endswith("/drip"):  # an answer that never ends: one header line every 0.3 s
            self.send_response(200)
            for i in range(100):
                self.send_header(f"X-Drip-{i}", "x")
                self.flush_headers()
                time.sleep(0.3)
            return
        if self.path.endswith("/moved"):  # a redirect to another host's path (the POST would become a GET there)
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere")
            self.end_headers()
            return
        failing = len(Hook.received) <= Hook.fail_first
        self.send_response(500 if failing else 200)
        self.end_headers()
        self.wfile.write(b"no" if failing else b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.received, Hook.fail_first = [], 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/cracknet-secret-token", Hook
    server.shutdown()


def test_a_shifted_night_and_a_grown_structure_alert_the_webhook_and_a_normal_night_does_not(
        ray_cluster, tmp_path, webhook):
    url, hook = webhook
    model = tmp_path / "model"
    save_artifact(str(model), dark_line_segmenter().state_dict(), mask_card())
    survey, output = tmp_path / "survey", tmp_path / "results"

    def night(number: int):
        lines = []
        summary = run_scoring(ScoreConfig(model=str(model), input=str(survey), output=str(output), batch_size=16,
                                          mm_per_pixel=1.0, alert_webhook=url), log=lines.append)
        return summary

    draw_night(survey / "bridge-17", "n1", photos=4, cracks=3, seed=1, length=20)
    draw_night(survey / "deck-a", "n1", photos=20, cracks=0, seed=2)
    first = night(1)
    assert first["scored"] == 24 and first["alerts"] == [] and hook.received == []

    draw_night(survey / "deck-b", "n2", photos=24, cracks=0, seed=3)  # a normal night: the same surface
    second = night(2)
    assert second["alerts"] == [], second["alerts"]
    assert second["drift"]["brightness_psi"] < 0.25 and hook.received == []

    hook.fail_first = 1  # the hook fails once: the alert still arrives, on the retry
    draw_night(survey / "bridge-17", "n3", photos=4, cracks=3, seed=4)  # the same structure: longer cracks
    draw_night(survey / "deck-c", "n3", photos=20, cracks=0, seed=5, light=(0.3, 0.5))  # a darker camera
    third = night(3)
    rules = sorted(a["rule"] for a in third["alerts"])
    assert rules == ["brightness_drift", "structure_change"], third["alerts"]
    change = next(a for a in third["alerts"] if a["rule"] == "structure_change")
    assert change["structure"].endswith("bridge-17") and change["previous_run_id"] == first["run_id"]
    assert third["drift"]["brightness_psi"] > 1.0
    assert len(hook.received) == 2 and hook.received[0] == hook.received[1]  # one message, sent again after a 500
    message = hook.received[-1]
    assert message["text"].startswith(f"cracknet: 2 alerts in scoring run {third['run_id']}")
    assert "bridge-17" in message["text"] and {a["rule"] for a in message["cracknet"]["alerts"]} == set(rules)
    assert third["alert_delivery"].startswith("sent to http://127.0.0.1:")
    assert "secret-token" not in third["alert_delivery"]  # the hook's secret is never printed or recorded

    # The record of each night, in the runs table, as monitoring and people read it.
    runs = run_query(str(output), "SELECT run_id, monitoring, alerts FROM runs WHERE job = 'scoring' "
                                  "ORDER BY run_id").to_pylist()
    assert [r["run_id"] for r in runs] == [first["run_id"], second["run_id"], third["run_id"]]
    record = json.loads(runs[2]["monitoring"])
    assert record["images"] == 24 and record["errors"] == 0 and record["crack_rate"] == 1.0
    assert sum(record["probability_histogram"]) == 24 and sum(record["brightness_histogram"]) == 24
    bridge = next(s for s in record["structures"] if s["structure"].endswith("bridge-17"))
    assert bridge["images"] == 4 and bridge["crack_length_mm"] > 4 * 3 * 70  # three cracks of ~76 px per photo
    assert [json.loads(r["alerts"]) for r in runs[:2]] == [[], []]
    assert "secret-token" not in json.dumps(runs)

    changes = run_query(str(output), "SELECT * FROM structure_changes").to_pylist()
    assert [c["structure"].rsplit("/", 1)[-1] for c in changes] == ["bridge-17"]
    assert changes[0]["previous_run_id"] == first["run_id"] and changes[0]["run_id"] == third["run_id"]
    assert changes[0]["crack_length_mm_change"] > 2 * changes[0]["previous_crack_length_mm"]

    # The nights page of the report: the nights, their alerts, the changed structure before and after.
    from cracknet.report.build import build_report

    written = build_report(None, str(tmp_path / "report"), results=str(output))
    page = open(written["report"]).read()
    assert "<h2>Nights</h2>" in page and "<h2>Structure changes</h2>" in page and "could not be drawn" not in page
    assert "brightness_drift: The images&#x27; brightness moved" in page and page.count("bridge-17") >= 1
    start = page.index("<h2>Structure changes</h2>")
    changed = page[start:page.index("</section>", start)]
    assert "1 structure shows more cracks" in changed and changed.count("data:image/png;base64") == 2
    assert str(tmp_path / "report" / "nights.png") in written["figures"]


def test_an_undeliverable_alert_is_reported_never_raised(webhook):
    from conftest import free_port

    waits = []
    fired = [{"rule": "error_rate", "message": "many errors", "value": 0.5}]
    told = alerts.post_alerts(f"http://127.0.0.1:{free_port()}/hook?token=abc", fired, "r1", "s3://b/results",
                               timeout=1.0, sleep=waits.append)
    assert told.startswith("not delivered to http://127.0.0.1:") and "token" not in told and waits == [1.0, 2.0]
    url, hook = webhook
    hook.fail_first = 5  # a hook that keeps failing: three attempts, then the run goes on
    told = alerts.post_alerts(url, fired, "r1", "s3://b/results", sleep=waits.append)
    assert len(hook.received) == 3 and told.endswith("(HTTP 500); they are in the run's row")


def test_a_webhook_has_one_deadline_for_everything_and_a_redirect_is_not_delivered(webhook):
    url, hook = webhook
    fired = [{"rule": "error_rate", "message": "many errors", "value": 0.5}]
    started = time.monotonic()
    told = alerts.post_alerts(url + "/drip", fired, "r1", "s3://b/results", timeout=1.0, deadline=2.5,
                               sleep=time.sleep)
    took = time.monotonic() - started
    assert took < 4.0 and told.startswith("not delivered") and "no complete answer within" in told, (took, told)
    assert "cracknet-secret-token" not in told
    hook.received.clear()
    told = alerts.post_alerts(url + "/moved", fired, "r1", "s3://b/results", sleep=lambda s: None)
    assert "HTTP 302, a redirect, not followed" in told and len(hook.received) == 1  # sent once, never elsewhere


@pytest.mark.parametrize("url, said", [
    ("http://hooks.example.com:port/secret", "and a numeric port; got http://(a malformed address)"),
    ("https://hooks.example.com/secret path", "no spaces or control characters"),
    ("ftp://hooks.example.com/x", "http:// or https:// URL with a host; got ftp://hooks.example.com"),
])
def test_a_webhook_url_that_could_not_be_posted_to_is_refused_up_front(url, said):
    with pytest.raises(CracknetError, match=re.escape(said)) as refused:
        ScoreConfig(model="m", input="i", output="o", alert_webhook=url)
    assert "secret" not in str(refused.value)


def test_an_alert_follows_the_proxy_settings_of_now_not_those_of_an_earlier_download(webhook, monkeypatch):
    # urlopen keeps the proxies it first saw for the whole process (torch's weight download, say): the alert must not.
    url, hook = webhook
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    urllib.request.install_opener(None)
    try:
        with pytest.raises(OSError):
            urllib.request.urlopen("http://127.0.0.1:9/", timeout=1.0)  # the process-wide opener keeps that proxy
        for var in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.delenv(var)
        told = alerts.post_alerts(url, [{"rule": "error_rate", "message": "many errors", "value": 0.5}], "r1",
                                   "s3://b/results", sleep=lambda s: None)
    finally:
        urllib.request.install_opener(None)
    assert told.startswith("sent to http://127.0.0.1:") and len(hook.received) == 1
