"""The documentation tells the truth: options from the docstring, runnable
examples that run, a short README whose links resolve."""

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import tf_only

from keras_gradmix import GradMixConfig

pytestmark = pytest.mark.backend_free  # no backend involved: one pass of `make test`

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_option_is_documented_in_the_config_docstring():
    """The docs site renders GradMixConfig's docstring as the options reference."""
    documented = set(re.findall(r"^        (\w+)(?:, (\w+))?:", GradMixConfig.__doc__, re.M))
    names = {n for pair in documented for n in pair if n}
    missing = [f.name for f in dataclasses.fields(GradMixConfig) if f.name not in names]
    assert not missing, f"options without a docstring entry: {missing}"


def runnable_blocks():
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"<!-- runnable -->\n```python\n(.*?)```", text, re.S):
            yield pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}:{text[:match.start()].count(chr(10)) + 1}")


@tf_only("the documentation's examples are run once, with TensorFlow")
@pytest.mark.parametrize("code", list(runnable_blocks()))
def test_runnable_examples_run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})


def test_there_are_runnable_examples():
    assert len(list(runnable_blocks())) >= 2


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_install_lines_work_as_written_before_a_release():
    """Not on a package index yet: an index install is only mentioned as what a
    release will allow; the wheel named is the one `make package` builds."""
    import keras_gradmix

    for page in PAGES:
        for line in page.read_text().splitlines():
            if re.search(r"pip install \S*keras-gradmix", line):
                assert "once released" in line.lower(), (page, line)
    readme = (ROOT / "README.md").read_text()
    wheels = re.findall(r"dist/(keras_gradmix-[^\s\[\"`]+\.whl)", readme)
    assert wheels == [f"keras_gradmix-{keras_gradmix.__version__}-py3-none-any.whl"]
    assert 'pip install -e ".[tensorflow' in readme and "make package" in readme


@tf_only("an architecture fact, checked once")
def test_which_layer_table_map_sizes_at_32_pixels():
    """models-and-layers.md: the last stage is 1x1 at 32x32, the stage before 2x2."""
    import keras

    text = open("docs/guides/models-and-layers.md").read()
    for build, last, before in [
        (keras.applications.ResNet50, "conv5_block3_out", "conv4_block6_out"),
        (keras.applications.MobileNetV2, "out_relu", "block_13_expand_relu"),
        (keras.applications.EfficientNetB0, "top_activation", "block6a_expand_activation"),
    ]:
        model = build(weights=None, input_shape=(32, 32, 3), classes=2)
        assert tuple(model.get_layer(last).output.shape[1:3]) == (1, 1)
        assert tuple(model.get_layer(before).output.shape[1:3]) == (2, 2)
        assert last in text and before in text


def test_runtime_messages_point_to_the_site_not_to_repository_paths():
    """A wheel user has no docs/, examples/ or benchmarks/ folder."""
    import ast

    found = []
    for path in sorted((ROOT / "keras_gradmix").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and re.search(r"\b(docs|examples|benchmarks|tests)/", node.value)):
                found.append(f"{path.name}: {node.value[:60]!r}")
    assert not found


def test_a_missing_optional_dependency_names_its_extra():
    import subprocess
    import sys

    block = "import sys; sys.modules['sklearn'] = None; "
    result = subprocess.run([sys.executable, "-c", block + "import keras_gradmix.osr"],
                            capture_output=True, text=True, env={"KERAS_BACKEND": "tensorflow",
                                                                 "PATH": ""})
    assert "needs scikit-learn: pip install scikit-learn (the keras-gradmix extra [osr])" in result.stderr
    training = "import keras_gradmix; keras_gradmix.GradMixModel"  # no optional import
    block = "import sys; sys.modules.update(sklearn=None, scipy=None, matplotlib=None); "
    assert subprocess.run([sys.executable, "-c", block + training], env={
        "KERAS_BACKEND": "tensorflow", "PATH": ""}).returncode == 0


def test_plots_without_matplotlib_name_the_plots_extra(monkeypatch):
    import sys

    from keras_gradmix.extras import require

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"plot_masks needs matplotlib: .*extra \[plots\]"):
        require("matplotlib", feature="plot_masks")


def _flat(page: str) -> str:
    """A page's text on one line (a quoted number may wrap across lines)."""
    return " ".join((ROOT / page).read_text().split())


def test_the_headline_gap_is_quoted_from_its_committed_runs():
    """README and the results guide quote GradMix's MLS AUROC gap to plain from
    docs/results/fashion_mnist_osr.json's runs (one source; they disagreed)."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import paired_differences

    runs = json.loads((ROOT / "docs/results/fashion_mnist_osr.json").read_text())["runs"]
    rows = [{"method": r["method"], "split": r["split"], "seed": r["seed"],
             "auroc": 100 * r["results"]["mls"]["auroc"]} for r in runs]
    gap = {d["method"]: d for d in paired_differences(rows, "auroc", "plain")}["gradmix"]
    quoted = (f"−{-gap['diff']:.1f} AUROC (95 % CI −{-gap['ci_low']:.1f} to "
              f"−{-gap['ci_high']:.1f}")
    for page in ("README.md", "docs/guides/results.md"):
        text = _flat(page)
        assert quoted in text, (page, quoted)


def test_the_spurious_cue_headline_is_quoted_from_the_committed_summary():
    """README and the results guide quote the spurious-cue study's headline
    cells (conflicting-cue accuracy) as docs/results/shortcut.json (the patch)
    and shortcut_grating.json (the control cue) have them."""
    import json

    for summary, key in (("shortcut", "patch, rho 0.99"), ("shortcut", "patch, rho 0.9"),
                         ("shortcut_grating", "grating, rho 0.99")):
        tables = json.loads((ROOT / f"docs/results/{summary}.json").read_text())["tables"][key]
        rows = {r["cell − baseline"]: r for r in tables["differences"] + tables["contrasts"]}
        for label in ("gradmix peak, replace − plain", "peak − random (replace)"):
            cell = rows[label]["Δacc. conflicting"].replace("-", "−")  # the pages' minus sign
            for page in ("README.md", "docs/guides/results.md"):
                assert cell in _flat(page), (page, key, label, cell)


def test_the_placement_contrasts_are_quoted_from_the_committed_summary():
    """README and the results guide quote the area-exact placement study's
    peak − random contrasts as docs/results/attribution_control.json has them."""
    import json

    compared = json.loads((ROOT / "docs/results/attribution_control.json").read_text())["compared"]
    rows = {r["contrast"]: r for r in compared}
    for label in ("peak vs random (positives)", "peak vs random (outliers)"):
        cell = rows[label]["ΔAUROC (MLS), shifted"].replace("-", "−")
        for page in ("README.md", "docs/guides/results.md"):
            assert cell in _flat(page), (page, label, cell)


def test_the_readme_mode_table_quotes_the_options_guide():
    """The README's "which mode for which goal" table is the options guide's,
    shortened: each of its rows' numbers (intervals, wins, timings) is in the
    guide's table, whose numbers come from committed summaries."""
    import re

    def table(page, header):
        text = (ROOT / page).read_text()
        return text[text.index(header):].split("\n\n")[0].splitlines()[2:]

    readme = table("README.md", "| goal | use | score | evidence |")
    guide = " ".join(table("docs/guides/options.md", "| goal | use | pair it with | evidence |"))
    assert len(readme) == 5
    for row in readme:
        numbers = re.findall(r"\[[^\]]+\] \(\d+/\d+\)|\d+ vs \d+ ms", row)
        assert numbers, row
        for number in numbers:
            assert number in guide, (row, number)


def _outlier_differences(stage: str, key: str, baseline: str = "plain") -> dict:
    """The outlier study's paired differences to ``baseline`` per cell, as text
    with the pages' minus sign, from docs/results/outliers_<stage>.json's runs."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import paired_differences, paired_text

    rows = json.loads((ROOT / f"docs/results/outliers_{stage}.json").read_text())["rows"]
    if baseline != "plain":
        rows = [r for r in rows if r["cell"] != "plain"]
    return {d["cell"]: paired_text(d).replace("-", "−")
            for d in paired_differences(rows, key, baseline, by="cell")}


def test_the_outlier_screen_is_quoted_from_its_committed_runs():
    """The results guide's screen table gives every variant's ΔAUROC (MLS), ΔAUROC
    (kNN) and Δaccuracy to plain as docs/results/outliers_screen.json's runs do,
    and names the variant the screen chose."""
    import json

    meta = json.loads((ROOT / "docs/results/outliers_screen.json").read_text())["meta"]
    assert meta["runs"] == meta["wanted"] == 52
    text = _flat("docs/guides/results.md")
    columns = [_outlier_differences("screen", key)
               for key in ("mls/auroc", "knn/auroc", "mls/accuracy")]
    for cell in columns[0]:
        row = f"| `{cell}` | " + " | ".join(column[cell] for column in columns) + " |"
        assert row in text, row
    assert f"(`{meta['best']}`), {columns[0][meta['best']]}" in text


def test_the_powered_outlier_result_is_quoted_from_its_committed_runs():
    """README, the results guide and the options guide quote the powered outlier
    study (the screen's variant against plain on 20 pairs: MLS and kNN AUROC) as
    docs/results/outliers_powered.json's runs give them; the results guide's
    table has each cell's difference to plain and the peak − random contrast."""
    import json

    meta = json.loads((ROOT / "docs/results/outliers_powered.json").read_text())["meta"]
    assert meta["runs"] == meta["wanted"] == 60 and meta["chosen_from_screen"]
    variant = list(meta["cells"])[1]  # plain, the variant, its random twin
    keys = ("mls/auroc", "knn/auroc", "energy-tuned/auroc", "react-tuned/auroc", "mls/accuracy")
    to_plain = [_outlier_differences("powered", key) for key in keys]
    to_random = [_outlier_differences("powered", key, f"{variant}-random") for key in keys]
    for page in ("README.md", "docs/guides/results.md", "docs/guides/options.md"):
        for cell in (to_plain[0][variant], to_plain[1][variant]):
            assert cell in _flat(page), (page, cell)
    text = _flat("docs/guides/results.md")
    for cell in (variant, f"{variant}-random"):
        row = f"| `{cell}` − plain | " + " | ".join(c[cell] for c in to_plain) + " |"
        assert row in text, row
    row = " | ".join(c[variant] for c in to_random)
    assert f"| peak − random (`{variant}` − its twin) | {row} |" in text, row
