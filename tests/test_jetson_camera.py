"""Camera sources and the camera app, with real parts: a video file rendered by our scene renderer
(one big shape per 2-second segment, moving through the cells: red circle, blue square, green
triangle), read through OpenCV's FFmpeg backend; an RTSP server on loopback (tests/rtsp_server.py)
streaming it in real time, with a drop and a reconnect; and a micro model trained here by the
training module to name the shape's colour, whose answers must follow the scene.

CSI and V4L2 need a camera: their GStreamer pipelines are checked as strings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures import VIDEO_SEGMENTS, scene_frames, train_colour_model, write_video

from vlm_edge.common.errors import InputError
from vlm_edge.jetson.camera import CameraApp, CameraConfig
from vlm_edge.jetson.sources import csi_pipeline, open_source, parse_uri, v4l2_pipeline

cv2 = pytest.importorskip("cv2", reason='needs OpenCV: pip install "vlm-edge[jetson]"')

PROMPT = "What colour is the shape?"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames, colours = scene_frames()
    path = write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames)
    return path, frames, colours


@pytest.fixture(scope="module")
def colour_engine(tmp_path_factory):
    return train_colour_model(tmp_path_factory.mktemp("colour"))


@pytest.fixture(scope="module")
def pipe(colour_engine):
    import vlm_edge.edge as edge

    return edge.load(str(colour_engine))


def _dominant(image: np.ndarray) -> str:
    """The colour name of the shape's pixels (the saturated ones)."""
    from vlm_edge.train.scenes import COLOURS

    pixels = image.reshape(-1, 3).astype(int)
    saturated = pixels[pixels.max(1) - pixels.min(1) > 80]
    mean = saturated.mean(0)
    return min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - mean).sum())


# ---- URIs and pipelines ------------------------------------------------------------------------------
def test_uris_name_their_sources(tmp_path, video):
    path = video[0]
    assert parse_uri(f"file://{path}").kind == "video" and parse_uri(str(path)).kind == "video"
    assert parse_uri(f"file://{tmp_path}").kind == "folder"
    assert parse_uri("v4l2:///dev/video1").target == "/dev/video1" and parse_uri("v4l2://2").target == "/dev/video2"
    spec = parse_uri("csi://1?width=1920&height=1080&framerate=30")
    assert (spec.kind, spec.target, spec.options) == ("csi", "1", {"width": 1920, "height": 1080, "framerate": 30})
    assert parse_uri("rtsp://cam.local:8554/live").kind == "rtsp"
    for bad, phrase in (("http://x/y.mp4", "unknown scheme"), (str(tmp_path / "none.mp4"), "neither a video"),
                        ("csi://front", "sensor id"), ("v4l2://video0", "/dev/videoN"),
                        ("csi://0?width=wide", "positive integers")):
        with pytest.raises(InputError, match=phrase):
            parse_uri(bad)


def test_gstreamer_pipelines_for_csi_and_usb_cameras():
    assert csi_pipeline(0, 1280, 720, 30) == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1,format=NV12 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false")
    assert v4l2_pipeline("/dev/video1", 640, 480, 15) == (
        "v4l2src device=/dev/video1 ! video/x-raw,width=640,height=480,framerate=15/1 ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


# ---- files and folders -----------------------------------------------------------------------------------
def test_video_file_gives_every_frame_in_order(video):
    path, frames, colours = video
    with open_source(f"file://{path}") as source:
        got = list(source)
    assert len(got) == len(frames) and [f.index for f in got] == list(range(len(frames)))
    assert all(b.pts > a.pts for a, b in zip(got, got[1:])) and abs(got[10].pts - 1.0) < 1e-6  # 10 frames/s
    assert got[0].image.shape == (224, 224, 3) and got[0].image.dtype == np.uint8
    assert [_dominant(f.image) for f in got] == colours  # RGB order, colours survive the codec
    assert not source.live


def test_fps_cap_and_folder_source(tmp_path, video):
    path, frames, _ = video
    with open_source(str(path), fps=2.5) as source:
        got = list(source)
    assert [round(f.pts, 3) for f in got[:4]] == [0.0, 0.4, 0.8, 1.2] and source.dropped == len(frames) - len(got)
    from PIL import Image

    for i in (2, 0, 1):
        Image.fromarray(frames[i * 20]).save(tmp_path / f"frame_{i}.png")
    with open_source(f"file://{tmp_path}") as source:
        assert [_dominant(f.image) for f in source] == ["red", "blue", "green"]


def test_realtime_file_is_live_and_paced(video):
    path, frames, _ = video
    start = time.monotonic()
    with open_source(str(path), realtime=True) as source:
        got = [f for f, _ in zip(source, range(15))]
    assert source.live and len(got) == 15
    assert time.monotonic() - start >= 1.3  # frame 14 is due at 1.4 s


# ---- the app on a file: the answers follow the scene ---------------------------------------------------
def test_answers_follow_the_scene_and_go_to_the_log(pipe, video, tmp_path):
    path, _, colours = video
    log_path = tmp_path / "answers.jsonl"
    app = CameraApp(pipe, open_source(f"file://{path}", fps=5), CameraConfig(PROMPT, log_path=str(log_path)))
    records = list(app.run())
    assert len(records) == 30 and app.stats.answers == 30  # 6 s at 5 frames/s, a file waits for every answer
    right = [r.answer == colours[r.frame] for r in records]
    assert sum(right) >= 27, [(r.frame, r.answer, colours[r.frame]) for r in records]
    seen = {r.answer for r in records}
    assert {c for c, _ in VIDEO_SEGMENTS} <= seen  # the answer changed when the scene did
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [r.frame for r in records]
    assert set(lines[0]) == {"frame", "captured", "answered", "latency", "prompt", "answer", "dropped", "pts"}


def test_prompt_changes_take_effect_from_the_next_frame(pipe, video):
    path, _, _ = video
    app = CameraApp(pipe, open_source(str(path)), CameraConfig(PROMPT, max_new_tokens=4))
    records = []
    for record in app.run():
        records.append(record)
        if len(records) == 3:
            app.set_prompt("Describe the shape.")
        if len(records) == 6:
            break
    assert [r.prompt for r in records] == [PROMPT] * 3 + ["Describe the shape."] * 3
    assert records[3].frame > records[2].frame


def test_alerts_run_a_command_at_most_once_per_interval(pipe, video, tmp_path):
    path, _, _ = video
    marks = tmp_path / "alerts.txt"
    command = f"{sys.executable} -c \"import os; open({str(marks)!r}, 'a').write(os.environ['VLM_ANSWER'] + chr(10))\""
    config = CameraConfig(PROMPT, alert="blue", alert_command=command, alert_every=3600)
    app = CameraApp(pipe, open_source(str(path), fps=5), config)
    records = list(app.run())
    assert sum(r.answer == "blue" for r in records) >= 5 and app.stats.alerts == 1
    deadline = time.monotonic() + 10  # the command runs in the background: wait for its line, not the file
    while not (marks.exists() and marks.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marks.read_text() == "blue\n"
    with pytest.raises(InputError, match="--alert-command"):
        CameraConfig(PROMPT, alert="blue").validate()
    with pytest.raises(InputError, match="not a regular expression"):
        CameraConfig(PROMPT, alert="(", alert_command="true").validate()


# ---- RTSP: a live stream with a drop and a reconnect ------------------------------------------------------
def test_rtsp_stream_drops_reconnects_and_keeps_answering(pipe, video):
    from rtsp_server import RtspServer

    _, frames, _ = video
    server = RtspServer(frames, fps=10).start()
    try:
        app = CameraApp(pipe, open_source(server.url, queue_size=2, retry_for=20), CameraConfig(PROMPT))
        shown = {}  # frame index -> the picture the source delivered
        app.listeners.append(lambda kind, value: shown.__setitem__(value.index, value.image) if kind == "frame" else None)
        records, dropped_at = [], None
        for record in app.run():
            records.append(record)
            if len(records) == 10 and dropped_at is None:
                dropped_at = len(records)
                server.drop(pause=1.0)
            if len(records) >= 25:
                app.stop()
        assert server.sessions == 2 and app.stats.reconnects == 1
        assert len(records) - dropped_at >= 10  # answers after the reconnect
        right = [r.answer == _dominant(shown[r.frame]) for r in records]
        assert sum(right) >= 0.9 * len(records), [(r.frame, r.answer, _dominant(shown[r.frame])) for r in records]
        assert len({r.answer for r in records}) >= 2  # the stream moved on through the segments
        assert all(r.latency > 0 for r in records)
    finally:
        server.stop()


# ---- vlm-camera, the command -------------------------------------------------------------------------------
def _camera(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlm_edge.jetson.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_vlm_camera_prints_answers_and_logs_them(colour_engine, video, tmp_path):
    path, _, _ = video
    log_path, summary = tmp_path / "log.jsonl", tmp_path / "summary.json"
    proc = _camera(str(colour_engine), "--source", f"file://{path}", "--prompt", PROMPT, "--fps", "1",
                   "--log", str(log_path), "--summary", str(summary))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if " frame " in line]
    assert len(lines) == 6 and lines[0].endswith("ms)") and ": red " in lines[0] and ": blue " in lines[2]
    assert json.loads(summary.read_text())["answers"] == 6 and len(log_path.read_text().splitlines()) == 6


def test_vlm_camera_stops_cleanly_on_ctrl_c(colour_engine, video):
    path, _, _ = video
    proc = _camera(str(colour_engine), "--source", str(path), "--realtime", "--prompt", PROMPT)
    first = proc.stdout.readline()  # an answer arrived: the stream is running
    assert " frame " in first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "summary: " in out and "Traceback" not in err


def test_vlm_camera_bad_input_is_one_line(colour_engine, tmp_path):
    for args, phrase in ((["--source", str(tmp_path / "none.mp4")], "neither a video file"),
                         (["--source", "http://x"], "unknown scheme"),
                         (["--source", str(tmp_path), "--alert", "x"], "--alert needs"),
                         (["--source", str(tmp_path), "--web", "nine"], "--web 'nine'")):
        proc = _camera(str(colour_engine), "--prompt", PROMPT, *args)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and phrase in err, err


# ---- the live page, in a real headless browser ------------------------------------------------------------
def _browser():
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Chromium and ChromeDriver (Debian: apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,1100"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


def test_web_page_shows_video_answers_and_takes_a_new_prompt(pipe, video, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from vlm_edge.jetson.web import WebView

    _, frames, _ = video
    path = write_video(tmp_path / "long.mp4", frames * 5)  # 30 s: the stream outlasts a slow browser start
    app = CameraApp(pipe, open_source(str(path), realtime=True), CameraConfig(PROMPT, max_new_tokens=4))
    web = WebView(app, "127.0.0.1", 0).start()
    assert web.host == "127.0.0.1"
    records = []
    worker = threading.Thread(target=lambda: records.extend(app.run()), daemon=True)
    worker.start()
    browser = _browser()
    try:
        browser.get(web.url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: int(b.find_element(By.ID, "frames").text) >= 5)  # video frames arrive
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#answers li"))  # an answer appears
        first = browser.find_element(By.CSS_SELECTOR, "#answers li")
        assert first.get_attribute("data-prompt") == PROMPT and first.get_attribute("data-answer")
        # the page swaps the image's src every 80 ms, so ask until a loaded frame is in it (on a busy
        # host one read can land while a new frame loads, and reads 0)
        wait.until(lambda b: b.execute_script("return document.getElementById('video').naturalWidth") == 224)
        box = browser.find_element(By.ID, "prompt")
        assert box.get_attribute("value") == PROMPT
        box.clear()
        box.send_keys("Describe the shape.")
        browser.find_element(By.CSS_SELECTOR, "#ask button").click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#answers li").get_attribute("data-prompt")
                   == "Describe the shape.")  # the next answers follow the new prompt
        assert app.prompt == "Describe the shape."
        shot = Path(__file__).resolve().parents[1] / "docs" / "images" / "vlm-camera.png"
        if os.environ.get("VLM_EDGE_SCREENSHOT"):  # docs/jetson.md's picture: VLM_EDGE_SCREENSHOT=1 pytest -k web
            shot.parent.mkdir(exist_ok=True)
            browser.save_screenshot(str(shot))
        else:
            browser.save_screenshot(str(tmp_path / "vlm-camera.png"))
    finally:
        browser.quit()
        app.stop()
        worker.join(timeout=30)
        web.stop()
    assert records and {r.prompt for r in records} == {PROMPT, "Describe the shape."}
