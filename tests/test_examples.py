import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_offline(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--epochs", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("method")[-1].splitlines()
    rows = {line.split()[0]: float(line.split()[1]) for line in table[1:3]}
    assert set(rows) == {"plain", "gradmix"}
    assert all(0.5 < acc <= 1.0 for acc in rows.values()), rows  # one epoch learns digits
    assert (tmp_path / "masks.png").stat().st_size > 1000


def test_gradmixmodel_docstring_example_runs(tmp_path, monkeypatch):
    import re

    import keras

    from keras_gradmix import GradMixModel

    code = re.search(r"```python\n(.*?)```", GradMixModel.__doc__, re.S).group(1)
    code = "\n".join(line[4:] for line in code.splitlines())
    monkeypatch.chdir(tmp_path)
    exec(code, {"keras": keras, "GradMixModel": GradMixModel})
    assert (tmp_path / "plain.keras").exists()
