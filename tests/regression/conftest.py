import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # golden_model, also run as a script


@pytest.fixture(scope="session")
def golden_checkpoint(tmp_path_factory):
    from golden_model import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("golden") / "ckpt")


@pytest.fixture(scope="session")
def golden_bundle(golden_checkpoint, tmp_path_factory):
    from pixdeploy.export.bundle import export_bundle

    bundle, _ = export_bundle(golden_checkpoint, tmp_path_factory.mktemp("golden") / "bundle", echo=lambda *_: None)
    return bundle.path
