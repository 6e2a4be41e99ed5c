"""What a person installs: the sdist and wheel `python -m build` makes, each in a clean virtualenv
on a PATH with no compiler, then the CLI round trip (encrypt, inspect, decrypt, sign, verify).

The wheel carries the C extensions (OpenSSL's AES-XTS, the tweak walker), `py.typed`, the
console script and the Glance import plugins' entry points. The sdist, installed where no
compiler exists, builds without them and takes the pure path: the bytes must be the same, so an
image encrypted by one installation decrypts to the same plaintext in the other.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("cc", "gcc", "clang", "x86_64-linux-gnu-gcc")

pytestmark = pytest.mark.slow


def _no_compiler_env(home: Path, venv: Path) -> dict[str, str]:
    """An environment whose PATH holds the virtualenv and a few basic tools, and no compiler."""
    tools = home / "bin"
    tools.mkdir(parents=True, exist_ok=True)
    for name in ("sh", "uname", "cat", "ls"):
        found = shutil.which(name)
        if found and not (tools / name).exists():
            (tools / name).symlink_to(found)
    env = {"HOME": str(home), "PATH": f"{venv / 'bin'}:{tools}", "LANG": "C.UTF-8",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "CC": "/nonexistent/cc"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    return env


def _run(argv: list[str | Path], env: dict[str, str], cwd: Path,
         stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True,
                          input=stdin, timeout=900, check=False)


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from this checkout as `python -m build` builds them."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, timeout=900, check=False)
    if proc.returncode != 0:
        pytest.fail("python -m build failed: " + proc.stderr.decode(errors="replace")[-3000:])
    wheels = list(out.glob("imgcrypt-*.whl"))
    sdists = list(out.glob("imgcrypt-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(out)
    return {"wheel": wheels[0], "sdist": sdists[0]}


def _install(tmp: Path, name: str, artefact: Path) -> tuple[Path, dict[str, str]]:
    venv = tmp / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = _no_compiler_env(tmp / f"{name}-home", venv)
    proc = _run([venv / "bin" / "python", "-m", "pip", "install", "-q",
                 "-c", ROOT / "upper-constraints.txt", artefact], env, tmp)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return venv, env


def _signing_files(directory: Path) -> tuple[Path, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wheel-signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False,
                                         False), critical=True)
            .sign(key, None))
    key_path, cert_path = directory / "signer.key", directory / "signer.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert cert.fingerprint(hashes.SHA256())
    return key_path, cert_path


def _round_trip(venv: Path, env: dict[str, str], work: Path) -> bytes:
    """encrypt, inspect, decrypt, sign, verify with the installed console script; each succeeds
    and writes nothing on stderr. Returns the encrypted image."""
    imgcrypt = venv / "bin" / "imgcrypt"
    work.mkdir()
    plain = os.urandom(3 << 20) + b"end of the image"
    (work / "disk.raw").write_bytes(plain)
    secret = work / "pass.txt"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"correct horse battery staple")
    os.close(fd)
    key_path, cert_path = _signing_files(work)
    steps: list[list[str | Path]] = [
        [imgcrypt, "--help"],
        [imgcrypt, "encrypt", "disk.raw", "disk.luks", "--passphrase-file", secret],
        [imgcrypt, "inspect", "disk.luks"],
        [imgcrypt, "decrypt", "disk.luks", "back.raw", "--passphrase-file", secret],
        [imgcrypt, "sign", "disk.luks", "--key", key_path, "--cert", cert_path,
         "--mode", "imgcrypt", "--properties-out", "sig.json"],
        [imgcrypt, "verify", "disk.luks", "--properties", "sig.json", "--cert", cert_path,
         "--trust", cert_path],
    ]
    for argv in steps:
        proc = _run(argv, env, work)
        assert proc.returncode == 0, (argv[1:2], proc.stderr.decode(errors="replace"))
        assert proc.stderr == b"", (argv[1:2], proc.stderr.decode(errors="replace"))
    back = (work / "back.raw").read_bytes()
    assert back[: len(plain)] == plain and not back[len(plain):].strip(b"\0")
    assert json.loads((work / "sig.json").read_text())["imgcrypt_sign_algorithm"] == "ed25519"
    return (work / "disk.luks").read_bytes()


_INSTALLED = """
import importlib.metadata as md, importlib.resources as rs, json
eps = md.entry_points()
out = {
    "console": [e.value for e in eps.select(group="console_scripts", name="imgcrypt")],
    "glance": sorted(e.name for e in eps.select(group="glance.image_import.plugins")),
    "typed": rs.files("imgcrypt").joinpath("py.typed").is_file(),
    "oslo": [e.value for e in eps.select(group="oslo.config.opts", name="imgcrypt")],
    "metadefs": sorted(p.name for p in rs.files("imgcrypt").joinpath("metadefs").iterdir()),
}
for name in ("_evpxts", "_xtsmul"):
    try:
        __import__("imgcrypt.crypto." + name)
        out[name] = True
    except ImportError:
        out[name] = False
print(json.dumps(out))
"""


def _installed(venv: Path, env: dict[str, str], cwd: Path) -> dict[str, object]:
    proc = _run([venv / "bin" / "python", "-c", _INSTALLED], env, cwd)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_wheel_and_sdist_install_without_a_compiler_and_agree(
        dist: dict[str, Path], tmp_path: Path) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = wheel.namelist()
    assert "imgcrypt/py.typed" in names
    assert any(n.startswith("imgcrypt/crypto/_evpxts.") and n.endswith(".so") for n in names)
    assert not any(n.startswith("tests/") for n in names)

    wheel_venv, wheel_env = _install(tmp_path, "from-wheel", dist["wheel"])
    assert _installed(wheel_venv, wheel_env, tmp_path) == {
        "console": ["imgcrypt.cli.main:main"],
        "glance": ["imgcrypt_encrypt", "imgcrypt_verify"],
        "typed": True, "_evpxts": True, "_xtsmul": True,
        "oslo": ["imgcrypt.glance.options:list_opts"],
        "metadefs": ["encryption.json", "signature.json", "verdict.json"],
    }
    made_by_wheel = _round_trip(wheel_venv, wheel_env, tmp_path / "wheel-run")

    # Elsewhere (no wheel for the platform, no compiler): the sdist installs the pure path.
    sdist_venv, sdist_env = _install(tmp_path, "from-sdist", dist["sdist"])
    installed = _installed(sdist_venv, sdist_env, tmp_path)
    assert installed["_evpxts"] is False and installed["_xtsmul"] is False
    assert installed["typed"] is True
    assert installed["metadefs"] == ["encryption.json", "signature.json", "verdict.json"]
    _round_trip(sdist_venv, sdist_env, tmp_path / "sdist-run")

    # The same image, decrypted by the pure path, gives the wheel's plaintext.
    cross = tmp_path / "cross"
    cross.mkdir()
    (cross / "disk.luks").write_bytes(made_by_wheel)
    shutil.copy(tmp_path / "wheel-run" / "pass.txt", cross / "pass.txt")
    proc = _run([sdist_venv / "bin" / "imgcrypt", "decrypt", "disk.luks", "back.raw",
                 "--passphrase-file", "pass.txt"], sdist_env, cross)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert (cross / "back.raw").read_bytes() == (tmp_path / "wheel-run" / "back.raw").read_bytes()
