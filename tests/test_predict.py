"""`genssl predict RUN_DIR PATH...`: a run's best checkpoint alone (no dataset) classifies image files and
folders; CSV and JSON output with the top-k; unreadable files are named; old checkpoints without a data spec."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genssl.cli import main
from genssl.config import build_run_config
from genssl.data.batching import SSLBatch, to_float
from genssl.data.folder import decode_image
from genssl.data.spec import DataSpec
from genssl.fileio import atomic_torch_save
from genssl.methods import create_method
from genssl.runs.run_dir import RunDir
from imagefiles import class_image, save, write_class_folders

CLASSES = ["square-top-left", "square-top-right", "square-bottom-left"]


def _trained_method(cfg, spec: DataSpec, steps: int = 60):
    """A supervised MLP fitted in a few steps to the imagefiles squares (one class per square position)."""
    torch.manual_seed(0)
    method = create_method(cfg.method_name, cfg.method, spec)
    method.setup(steps)
    c, h, w = spec.image_shape
    x = torch.from_numpy(np.stack([class_image(k, (h, w), 100 + i, c).reshape(h, w, c).transpose(2, 0, 1)
                                   for i in range(30) for k in range(3)]))
    y = torch.arange(3).repeat(30)
    method.train()
    for step in range(steps):
        method.train_step(SSLBatch(to_float(x), y, to_float(x)), step)
    return method.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as the Trainer writes it (format 2: config, data spec, class names), trained on 3-channel
    12x10 images of a `dataset: folder` whose folders do not exist here: predict must not need them."""
    root = tmp_path_factory.mktemp("predict")
    cfg = build_run_config({
        "out_dir": str(root), "name": "run",
        "method": {"name": "supervised", "arch": "mlp", "hidden": [32], "lr": 0.01},
        "data": {"dataset": "folder", "labeled": "/nowhere/labeled", "unlabeled": "/nowhere/unl",
                 "test": "/nowhere/test", "image_size": [12, 10], "channels": 3},
        "train": {"device": "cpu", "eval_batch_size": 4},
    })
    spec = DataSpec((3, 12, 10), 3, 90, 90)
    method = _trained_method(cfg, spec)
    run = RunDir(root / "run")
    run.prepare(resume=False)
    run.write_config(cfg)
    run.save_checkpoint(RunDir.BEST, {"method": cfg.method_name, "config": cfg.to_dict(),
                                      "data_spec": spec.to_dict(), "class_names": CLASSES,
                                      "model": method.state_dict(), "step": 60, "val_acc": 1.0})
    return run.path


@pytest.fixture
def images(tmp_path):
    """Every class's square as grey and colour files of other sizes, in a tree, plus one loose file."""
    folder = tmp_path / "imgs"
    for k in range(3):
        save(class_image(k, (24, 20), 500 + k, 3), folder / "colour" / f"c{k}.png")
        save(class_image(k, (12, 10), 600 + k), folder / "grey" / "deep" / f"g{k}.jpg")
    loose = save(class_image(1, (36, 30), 700, 3), tmp_path / "loose.bmp")
    return folder, loose


def test_predict_csv_names_classes_and_top_k(run_dir, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "no-data-here"))
    folder, loose = images
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(loose), str(folder), "--out", str(out), "--top-k", "2",
                 "--no-progress"]) == 0
    assert "7 image(s) -> " in capsys.readouterr().err
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["path", "class", "probability", "class_2", "probability_2"]
    paths = [r[0] for r in rows[1:]]
    assert paths == [str(loose)] + [str(p) for p in sorted(folder.rglob("*.*"))]  # files as given, folders sorted
    expected = {"c0": 0, "c1": 1, "c2": 2, "g0": 0, "g1": 1, "g2": 2, "loose": 1}
    for path, cls, p1, cls2, p2 in rows[1:]:
        assert cls == CLASSES[expected[Path(path).stem]], path
        assert cls2 != cls and cls2 in CLASSES and 1 >= float(p1) >= float(p2) >= 0


def test_predict_probabilities_are_the_models(run_dir, images, tmp_path):
    folder, _ = images
    out = tmp_path / "preds.json"
    assert main(["predict", str(run_dir), str(folder), "--out", str(out), "--top-k", "5", "--no-progress"]) == 0
    rows = json.loads(out.read_text())  # the format follows --out's suffix
    assert len(rows) == 6 and all(len(r["top_k"]) == 3 for r in rows)  # top-5 of 3 classes is all 3
    best = torch.load(run_dir / "best.pt", weights_only=True)
    cfg = build_run_config(best["config"])
    method = create_method("supervised", cfg.method, DataSpec.from_dict(best["data_spec"]))
    method.load_state_dict(best["model"])
    method.eval()
    for r in rows:
        x = torch.from_numpy(decode_image(r["path"], (12, 10), 3))[None]
        with torch.no_grad():
            probs = torch.softmax(method.predict(to_float(x)), 1)[0]
        assert r["class"] == CLASSES[int(probs.argmax())]
        assert r["probability"] == pytest.approx(float(probs.max()), abs=1e-6)
        assert sum(t["probability"] for t in r["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_unreadable_files_are_named_and_skipped_only_when_asked(run_dir, images, tmp_path, capsys):
    folder, _ = images
    bad = folder / "colour" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    assert main(["predict", str(run_dir), str(folder), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"1 of 7 file(s) cannot be read as images:\n  {bad}: " in err and "--skip-bad" in err
    assert main(["predict", str(run_dir), str(folder), "--no-progress", "--skip-bad", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert f"skipped {bad}:" in captured.err
    lines = captured.out.splitlines()  # no --out: standard output
    assert len(lines) == 1 + 6 and lines[0].startswith("path,class,probability,class_2")


def test_bad_arguments_are_clear(run_dir, tmp_path, capsys):
    assert main(["predict", str(run_dir), str(tmp_path / "missing.png")]) == 2
    assert "no such file or folder: " in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run_dir), str(tmp_path / "empty")]) == 1
    assert "no image files in" in capsys.readouterr().err
    save(class_image(0), tmp_path / "one.png")
    assert main(["predict", str(tmp_path), str(tmp_path / "one.png")]) == 2
    assert "best.pt not found" in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(tmp_path / "one.png"), "--top-k", "0"]) == 1
    assert "--top-k must be at least 1" in capsys.readouterr().err


def test_a_checkpoint_without_a_data_spec(tmp_path):
    """Format-1 best.pt files (config + model, no data spec) of a built-in dataset: the shape comes from the config,
    the class names from the dataset's documented names."""
    cfg = build_run_config({"method": {"name": "supervised", "arch": "mlp", "hidden": [16]},
                            "data": {"dataset": "fashion_mnist"}, "train": {"device": "cpu"}})
    method = create_method("supervised", cfg.method, DataSpec((1, 28, 28), 10, 100, 1000))
    run = RunDir(tmp_path / "old")
    run.prepare(resume=False)
    run.write_config(cfg)
    atomic_torch_save({"format_version": 1, "method": "supervised", "config": cfg.to_dict(),
                       "model": method.state_dict(), "step": 1, "val_acc": 0.1}, run / "best.pt")
    write_class_folders(tmp_path / "imgs", {"x": 0}, 2, size=(28, 28))
    out = tmp_path / "p.csv"
    assert main(["predict", str(run.path), str(tmp_path / "imgs"), "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert len(rows) == 3 and rows[1][1] in {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                             "Shirt", "Sneaker", "Bag", "Ankle boot"}
