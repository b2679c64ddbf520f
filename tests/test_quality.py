"""Quality bars from real data (slow: run with `make test-slow`)."""
import pytest

from lmforge.app.training import train_from_config
from lmforge.config import load_config

from conftest import SHARED

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shakespeare_char_recipe_reaches_nanogpt_quality(tmp_path):
    data = SHARED / "tinyshakespeare" / "input.txt"
    if not data.is_file():
        pytest.skip(f"needs the shared data folder ({data})")
    config = load_config(ROOT / "configs" / "shakespeare-char.toml",
                         [f'data.paths=["{data}"]', f'run.dir="{tmp_path / "run"}"', "train.save_every=0"])
    _, result = train_from_config(config, progress=False)
    assert result.eval["val_loss"] <= 1.90
