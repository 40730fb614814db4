"""The README's Python API example runs as written (on a small synthetic Fashion-MNIST, with fewer steps)."""

from __future__ import annotations

import re
from pathlib import Path

from datafiles import write_idx_dataset

README = Path(__file__).resolve().parent.parent / "README.md"


def api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    # 800 training images: the example's 100 labels, its validation set (5,000 images there, 200 here: the split and
    # the Trainer both read that number, so both are replaced) and an unlabeled pool.
    write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=800, n_test=200)
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    code = api_example()
    assert '"steps": 3000' in code and code.count("n_val=5000") == 1 and code.count('"n_val": 5000') == 1
    code = code.replace('"steps": 3000', '"steps": 4, "eval_every": 2, "progress": False')
    code = code.replace("n_val=5000", "n_val=200").replace('"n_val": 5000', '"n_val": 200')
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    assert "M1 + linear probe:" in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / "api-m1" / "encoder" / "encoder.yaml").is_file()
