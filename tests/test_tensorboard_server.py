"""TensorBoard as users see it: the real `tensorboard` server, started over a tiny run's tb/ folder on a free
loopback port, serves the run's train/val scalars, its sample images and its HParams session through the same
HTTP data API its web page reads. Startup is bounded; the server is stopped at the end whatever happens."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from genssl.training.trainer import Trainer

pytest.importorskip("tensorboard")

STARTUP_S = 120  # the server's imports take seconds on a loaded CPU; its read of the logdir a little more


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tensorboard` that reads the logdir once, before it serves (--reload_task blocking): the line it prints
    when it starts serving is the event the test waits for, and every answer after it is final (no polling)."""

    def __init__(self, logdir):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", str(self.port), "--load_fast", "false", "--reload_interval", "0",
             "--reload_task", "blocking"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def wait_until_serving(self) -> None:
        """Block on the server's output until it says it serves (bounded by STARTUP_S)."""
        deadline, seen = time.monotonic() + STARTUP_S, []
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"tensorboard did not start serving within {STARTUP_S}s: {b''.join(seen)!r}")
            line = self.proc.stdout.readline()
            if not line:  # the server exited
                raise AssertionError(f"tensorboard exited ({self.proc.wait()}): {b''.join(seen)[-2000:]!r}")
            seen.append(line)
            if line.startswith(b"TensorBoard ") and f"http://127.0.0.1:{self.port}/".encode() in line:
                return

    def request(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"X-XSRF-Protected": "1", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return raw if path.startswith("/data/plugin/images/individualImage") else json.loads(raw)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory, tiny_data):
    from conftest import tiny_run_config

    out = tmp_path_factory.mktemp("tb")
    cfg = tiny_run_config("vae_m1", out, {"hidden": [32], "z_dim": 4}, name="tiny",
                          train={"steps": 6, "eval_every": 3, "log_every": 2})
    Trainer(cfg, data=tiny_data).fit()
    return out / "tiny"


def test_tensorboard_serves_scalars_images_and_hparams(tb_run):
    server = Server(tb_run / "tb")
    try:
        server.wait_until_serving()
        tags = server.request("/data/plugin/scalars/tags")
        run = next(r for r, t in tags.items() if "val/acc" in t)
        scalar_tags = set(tags[run])
        assert {"train/elbo", "train/rec", "train/kl", "val/acc"} <= scalar_tags, scalar_tags
        q = urllib.parse.urlencode({"run": run, "tag": "val/acc"})
        points = server.request(f"/data/plugin/scalars/scalars?{q}")
        assert [p[1] for p in points] == [3, 6] and all(0 <= p[2] <= 1 for p in points)
        q = urllib.parse.urlencode({"run": run, "tag": "train/elbo"})
        steps = [p[1] for p in server.request(f"/data/plugin/scalars/scalars?{q}")]
        assert steps == sorted(set(steps)) and {2, 4, 6} <= set(steps) <= set(range(1, 7)), steps

        images = server.request("/data/plugin/images/tags")
        image_run, image_tags = next((r, t) for r, t in images.items() if t)
        assert image_tags, images
        tag = sorted(image_tags)[0]
        q = urllib.parse.urlencode({"run": image_run, "tag": tag, "sample": 0})
        entries = server.request(f"/data/plugin/images/images?{q}")
        assert [e["step"] for e in entries] == [3, 6]
        png = server.request(f"/data/plugin/images/individualImage?{entries[-1]['query']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"

        experiment = server.request("/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        assert {"method.z_dim", "train.steps", "train.seed"} <= hparams, hparams
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"hparam/test_acc", "hparam/best_val_acc"} <= metrics, metrics
        groups = server.request("/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"],
            "colParams": [], "startIndex": 0, "sliceSize": 10})
        assert groups["totalSize"] == 1
        session = groups["sessionGroups"][0]
        assert session["hparams"]["method.z_dim"] == 4
        values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
        results = json.loads((tb_run / "results.json").read_text())
        assert values["hparam/test_acc"] == pytest.approx(results["test_acc"])
    finally:
        server.stop()
    assert server.proc.returncode is not None
