"""The package's own entry points: what `import emsr` offers a user at the top level."""

import subprocess
import sys

import torch

import emsr
from emsr.checkpoint import save_checkpoint


def test_build_model_and_load_checkpoint_are_importable_from_the_package(tmp_path):
    from emsr import build_model, load_checkpoint

    torch.manual_seed(0)
    model = build_model("small", scale=2)
    save_checkpoint(tmp_path, model, preset="small", step=1, normalization={})
    loaded = emsr.load_checkpoint(tmp_path)
    assert load_checkpoint is emsr.load_checkpoint and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_importing_the_package_for_its_errors_does_not_import_torch():
    probe = "import sys, emsr.errors; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
