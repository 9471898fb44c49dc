"""The listening report: written during training and on demand, self-contained, and checked in a real browser
(headless Chromium from Debian's packages: the clips load and decode, no console errors, a screenshot)."""

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import soundfile as sf

from higgs_train.cli import app
from tests.conftest import runner

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = [  # what this machine's closed network and root user need (see .ci/run)
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.audio, self.images, self.best_rows, self.status = [], [], [], {}
        self._in_best = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "audio":
            self.audio.append(attrs["src"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr":
            self._in_best = attrs.get("class") == "best"
        elif tag == "a" and self._in_best:
            self.best_rows.append(attrs["href"])
        elif tag == "p" and attrs.get("id") == "audio-status":
            self.status = attrs


@pytest.fixture(scope="module")
def run(listened_run):
    return listened_run


def test_the_report_is_written_during_training_and_holds_everything_inside_the_run_folder(run):
    page = Page((run / "report.html").read_text())
    # per scored step: 2 generated + 2 real clips; per sampled step: the sample and its voice prompt
    assert len(page.audio) == 2 * (2 + 2 + 2)
    for src in page.audio:
        assert not src.startswith(("/", "file:", "http")), src  # relative to the run folder: opens anywhere
        wave, rate = sf.read(run / src)
        assert len(wave) > 0 and rate == 24000
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images)
    best = (run / "best").read_text().strip()
    assert page.best_rows == [f"#step-{best.split('-')[1]}"]  # one row marked, the one `best` names
    text = (run / "report.html").read_text()
    scored = json.loads((run / "samples" / "step-2" / "items.json").read_text())
    assert "hello there" in text and all(item["text"] in text for item in scored) and len(scored) == 2


def test_the_report_command_rewrites_it_and_refuses_a_folder_that_is_not_a_run(run, tmp_path):
    (run / "report.html").unlink()
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0 and (run / "report.html").is_file(), result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run folder (no metrics.jsonl or config.json); pass a run's --output_dir" in result.output


def browse(page, tmp_path, *extra):
    """Headless Chromium on the page; (stdout, console lines)."""
    args = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's chromium package (.ci/run does, as root)")
def test_the_report_in_a_real_browser(run, tmp_path):
    dom, console = browse(run / "report.html", tmp_path, "--virtual-time-budget=10000", "--dump-dom")
    status = Page(dom).status
    assert console == []
    assert int(status["data-total"]) == len(Page((run / "report.html").read_text()).audio) == 12
    assert (status["data-ok"], status["data-failed"]) == (status["data-total"], "0"), status
    _, console = browse(run / "report.html", tmp_path, "--window-size=1200,2400", f"--screenshot={tmp_path / 's.png'}")
    assert console == [] and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"

    copy = shutil.copytree(run, tmp_path / "copy")  # a copied run folder plays as well: nothing points outside it
    broken = copy / Page((copy / "report.html").read_text()).audio[0]
    broken.write_bytes(b"RIFF\x00\x00not audio at all")  # and the page tells a clip that does not decode
    dom, _ = browse(copy / "report.html", tmp_path, "--virtual-time-budget=10000", "--dump-dom")
    assert (Page(dom).status["data-ok"], Page(dom).status["data-failed"]) == ("11", "1")
