"""report: one self-contained HTML page (embedded PNGs, no script, no network) with every section."""

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from convae.cli import main
from convae.analysis.compare import compare
from convae.config import RunConfig, apply_overrides
from convae.data import load_dataset
from convae.analysis.probe import probe
from convae.report import build_report, markdown_html, write_report
from convae.training import train

_BUILT: dict[str, Path] = {}


def make_report_inputs(root: Path) -> dict[str, Path]:
    """Tiny digits runs (ConvAE with a probe.json, FCAE) and a small compare directory; built once per session."""
    if _BUILT:
        return _BUILT
    common = ["data.spec=digits", "train.epochs=2", "train.precision=fp32", "model.latent_dim=8"]
    for kind, sets in {"conv": ["model.kind=conv", "model.channels=8,16"], "dense": ["model.kind=dense", "model.hidden=32"]}.items():
        train(apply_overrides(RunConfig(), common + sets), root / kind, progress=False)
    digits = load_dataset("digits").subset(range(400))
    probe(root / "conv", data=digits, layers=None, pool="avg2", classifiers=["logreg"], baselines=("raw",), labels_per_class=[5],
          seeds=[0, 1], cv_folds=2, fcae=None)
    compare("digits", root / "compare", conv_run=root / "conv", dense_run=root / "dense", limit=500, shifts=(2,),
            sections=("parameters", "hierarchy", "translation"), probe_train_limit=300, analysis_limit=100)
    _BUILT.update(conv=root / "conv", dense=root / "dense", compare=root / "compare")
    return _BUILT


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_report_inputs(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(inputs):
    path = write_report(inputs["conv"], compare=inputs["compare"], fcae=inputs["dense"])
    return path, path.read_text()


def test_report_is_self_contained(page):
    path, text = page
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)  # nothing fetched: only data: URLs and anchors
    assert "http://" not in text and "https://" not in text
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == text.count("<img") >= 12
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.verify()


def test_report_has_every_section(page):
    _, text = page
    for anchor in ("config", "training", "probe", "viz", "compare"):
        assert f'id="{anchor}"' in text
    for heading in ("Reconstructions", "First-layer filters", "Feature maps", "Top patches", "Activation maximization",
                    "Latent traversal", "Embedding", "Hierarchy", "Translation", "Parameters"):
        assert heading in text
    assert "15,000,500" in text  # the parameter reference of the compare section
    assert "<table>" in text and "stage2" in text and "receptive field" in text
    assert "accuracy versus depth" in text.lower() or "versus depth" in text


def test_report_without_probe_or_compare_says_what_to_run(inputs, tmp_path):
    text = build_report(inputs["dense"])
    assert "No probe results" in text and "convae probe" in text and 'id="compare"' not in text


def test_report_cli_writes_where_asked(inputs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(inputs["dense"]), "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(inputs["dense"]), "--compare", str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_markdown_tables_and_paragraphs_become_html():
    text = markdown_html("Intro line\nwith more.\n\n| a | b |\n|---|---:|\n| x<y | 2 |\n\n### Head")
    assert "<p>Intro line with more.</p>" in text
    assert "<th>a</th>" in text and "<td>x&lt;y</td>" in text and "---" not in text
    assert "<h4>Head</h4>" in text


def test_report_captions_name_the_split_the_images_came_from(page):
    """digits has no test split: the images are its train split, as the header says, and the captions say so too."""
    _, text = page
    header = re.search(r"images shown from \S+ \((\w+) split", text)
    assert header and header.group(1) == "train"
    section = text[text.index('id="viz"'):]
    section = section[:section.find("<h2", 1)]  # the viz section (compare's own tables speak of its test split)
    assert "Train-split images (top) and their reconstructions." in section
    assert "test images" not in section.lower()
    assert "three train-split images at every depth" in section and "the 8 train-split images that excite it most" in section
