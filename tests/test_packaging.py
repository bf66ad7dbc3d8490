"""setup.cfg lists every package of refmeta, so a plain ``pip install .`` (not editable) installs
all of them: a package missing there imports from a source checkout and fails everywhere else."""

import configparser
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_setup_cfg_lists_every_package():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "refmeta").rglob("__init__.py")}
    on_disk.add("refmeta.demos")                            # package_dir maps it to demos/
    assert listed == on_disk, (f"missing from setup.cfg: {sorted(on_disk - listed)}; "
                               f"listed but absent: {sorted(listed - on_disk)}")
