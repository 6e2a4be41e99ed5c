"""The OpenStack-library conventions imgcrypt follows: a version the command prints, the
Glance plugins' options for oslo-config-generator with a generated sample kept current, and
release notes that reno accepts."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import imgcrypt
from imgcrypt.glance import options
from tests.helpers.util import imgcrypt as run_imgcrypt

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GENERATOR_CONF = ROOT / "etc" / "oslo-config-generator" / "imgcrypt.conf"
SAMPLE = ROOT / "etc" / "imgcrypt.conf.sample"


def pyproject_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_version_prints_the_pyproject_version_and_nothing_else() -> None:
    proc = run_imgcrypt("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, f"imgcrypt {pyproject_version()}\n".encode(), b"")


def test_version_attribute_is_the_installed_distribution() -> None:
    assert imgcrypt.__version__ == importlib.metadata.version("imgcrypt") == pyproject_version()


def test_version_is_looked_up_only_when_asked_for() -> None:
    # importlib.metadata costs tens of milliseconds: `import imgcrypt` must not pay them.
    code = "import sys, imgcrypt; print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert out.stdout == b"False\n"


def test_options_are_registered_for_the_config_generator() -> None:
    found = [ep for ep in importlib.metadata.entry_points(group="oslo.config.opts")
             if ep.name == "imgcrypt"]
    assert len(found) == 1, "run pip install -e . after editing pyproject.toml's entry points"
    listed = found[0].load()()
    assert [(group, [opt.name for opt in opts]) for group, opts in listed] == [
        (options.GROUP, [opt.name for opt in options._options()])]


def _generator() -> Path:
    generator = BIN / "oslo-config-generator"
    assert generator.exists(), f"{generator} is missing: pip install -e '.[dev]'"
    return generator


def test_sample_configuration_is_current(tmp_path: Path) -> None:
    """etc/imgcrypt.conf.sample is what oslo-config-generator makes of the options today;
    `make sample-config` rewrites it."""
    out = tmp_path / "imgcrypt.conf.sample"
    subprocess.run([str(_generator()), "--config-file", str(GENERATOR_CONF),
                    "--output-file", str(out)], check=True, cwd=ROOT, capture_output=True)
    assert SAMPLE.read_text() == out.read_text(), (
        "etc/imgcrypt.conf.sample is stale: run `make sample-config` and commit it")


def test_sample_configuration_names_every_option_with_its_default() -> None:
    text = SAMPLE.read_text()
    assert "[imgcrypt]" in text
    for opt in options._options():
        default = opt.default
        shown = ("<None>" if default is None else str(default).lower()
                 if isinstance(default, bool) else ",".join(map(str, default))
                 if isinstance(default, list) else str(default))
        assert f"\n#{opt.name} = {shown}\n" in text, opt.name


def test_sample_configuration_loads_into_oslo_config(tmp_path: Path) -> None:
    """The sample with its options uncommented is a configuration the plugins accept."""
    from oslo_config import cfg

    conf_file = tmp_path / "glance-api.conf"
    conf_file.write_text("".join(
        line[1:] if line.startswith("#") and " = " in line and "<None>" not in line else line
        for line in SAMPLE.read_text().splitlines(keepends=True)))
    conf = cfg.ConfigOpts()
    options.register(conf)
    conf(args=[], default_config_files=[str(conf_file)])
    policy = options.upload_policy(conf)
    assert policy.allowed_luks_versions == frozenset({1})
    assert conf.imgcrypt.encrypt_key_deletion_policy == "on_image_deletion"


def test_release_notes_pass_reno_lint() -> None:
    reno = BIN / "reno"
    assert reno.exists(), f"{reno} is missing: pip install -e '.[dev]'"
    proc = subprocess.run([str(reno), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
