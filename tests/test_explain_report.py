"""`lmforge report` on real (tiny) runs: one self-contained page with every section; the report and an
attribution page opened in headless Chromium and their screenshots checked."""
import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import small_corpus
from lmforge.api import LM
from lmforge.cli import main
from lmforge.app.workflows.report import build_report
from lmforge.modeldir import ModelDirError
from test_classify import reviews, write_csv

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "apt-get install -y chromium (Debian/Ubuntu; .ci/run does it)"
TINY = dict(n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "corpus.txt").write_text(small_corpus(300), encoding="utf-8")
    torch.manual_seed(0)
    lm = LM.new("gpt", tokenizer="char", corpus=root / "corpus.txt", block_size=48, **TINY)
    lm.fit(root / "corpus.txt", run_dir=root / "gpt", max_steps=40, batch_size=8, lr=3e-3, warmup_steps=5,
           eval_every=20, eval_steps=2, progress=False)
    train = write_csv(root / "train.csv", reviews(160, 0))
    clf = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=train, block_size=32, **TINY)
    clf.fit(train, objective="classify", run_dir=root / "clf", max_steps=40, batch_size=16, lr=3e-3, warmup_steps=5,
            eval_every=20, weight_decay=0.0, progress=False)
    return root


def images_of(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)]


def assert_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)\s*=\s*"(?!data:)', page), "the page must not load anything"
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_classifier_report_has_every_section(runs, tmp_path):
    out = build_report(runs / "clf", tmp_path / "clf.html")
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    for heading in ("Run", "Training curves", "Evaluation", "Attention sample", "Attributions", "Configuration",
                    "Model card"):
        assert f"<h2>{heading}</h2>" in page
    assert "macro-F1" in page and "objective = &quot;classify&quot;" in page
    assert page.count('<div class="tokens">') == 3 and page.count("true label <b>") == 3
    assert "validation rows of" in page and "completeness passes" in page
    pictures = images_of(page)
    assert len(pictures) == 3 and all(p.startswith(b"\x89PNG") for p in pictures)  # curves, confusion, attention
    assert "Classification head over 2 labels" in page  # the model card


def test_lm_report_reads_validation_tokens_and_attributes_the_real_next_token(runs, tmp_path):
    page = build_report(runs / "gpt" / "final", tmp_path / "gpt.html", samples=2).read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "the validation split" in page and page.count('<div class="tokens">') == 2
    assert "target continuation" in page and page.count("completeness passes") == 2
    assert len(images_of(page)) == 2  # curves and attention (no confusion matrix for an LM)


def test_report_bad_input(runs, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nowhere", tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="holds no model: expected final/"):
        build_report(tmp_path / "empty", tmp_path / "r.html")
    with pytest.raises(ValueError, match="give --out a .html name"):
        build_report(runs / "gpt", tmp_path / "r.pdf")
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


def screenshot(browser: str, page, png, width: int, height: int, profile) -> np.ndarray:
    from PIL import Image

    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                    f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("RGB")).astype(int)


def test_report_and_attribution_page_render_in_headless_chromium(runs, tmp_path):
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip(f"no headless browser (looked for {', '.join(BROWSERS)}); install one: {INSTALL}")
    report = build_report(runs / "clf", tmp_path / "report.html")
    lm = LM.from_pretrained(runs / "clf" / "final")
    attribution = lm.attribute("a great and delightful film with superb acting", "pos", out=tmp_path / "attr.html")
    assert attribution.completeness_relative <= 0.05

    shot = screenshot(browser, report, tmp_path / "report.png", 1200, 2400, tmp_path / "profile")
    assert shot.shape == (2400, 1200, 3)
    not_white = (shot < 235).any(-1)
    assert 0.05 < not_white.mean() < 0.9, "the report renders as a page with content, not blank or solid"
    assert len(np.unique(shot.reshape(-1, 3) // 16, axis=0)) > 50  # text, plots and colour maps
    heading_blue = (np.abs(shot - [0x1F, 0x4E, 0x79]).sum(-1) < 30)
    assert heading_blue.sum() > 500  # the section headings and the rule under the title

    shot = screenshot(browser, tmp_path / "attr.html", tmp_path / "attr.png", 1000, 700, tmp_path / "profile")
    assert shot.shape == (700, 1000, 3)
    assert 0.02 < (shot < 235).any(-1).mean() < 0.9
    red, green, blue = shot[..., 0], shot[..., 1], shot[..., 2]
    tinted_green = (green > red + 20) & (green > blue + 20)
    assert tinted_green.sum() > 200, "tokens that support the target are shaded green"
