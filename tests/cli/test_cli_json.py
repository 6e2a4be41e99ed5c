"""One JSON vocabulary for every command, and an error object when --json is given."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.pki import cert_pem, key, key_pem, make_cert
from tests.helpers.util import IMGCRYPT, imgcrypt, secret_file

FAST = ["--iterations", "1000"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "disk.raw").write_bytes(os.urandom(1 << 20))
    signer = key("p384")
    (tmp_path / "s.key").write_bytes(key_pem(signer))
    (tmp_path / "s.crt").write_bytes(cert_pem(make_cert(signer)))
    return {"dir": tmp_path, "pw": secret_file(tmp_path, "pw", b"pw"),
            "keys": tmp_path / "keys"}


def out(*args: str | Path) -> dict[str, object]:
    proc = imgcrypt(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert isinstance(document, dict)
    return document


def test_key_id_source_and_target_everywhere(env: dict[str, Path]) -> None:
    d, ks = env["dir"], ["--keystore", str(env["keys"])]
    created = out("keys", "create", *ks)
    key_id = created["key_id"]
    assert created["secret"]["key_id"] == key_id  # type: ignore[index]
    listed = out("keys", "list", *ks)
    assert [s["key_id"] for s in listed["secrets"]] == [key_id]  # type: ignore[attr-defined]
    shown = out("keys", "show", str(key_id), *ks)
    assert shown["secret"]["key_id"] == key_id and "secret_id" not in shown["secret"]  # type: ignore[index,operator]
    enc = out("encrypt", d / "disk.raw", d / "t.luks", "--key-id", str(key_id), *ks, *FAST)
    assert enc["source"] == str(d / "disk.raw") and enc["target"] == str(d / "t.luks")
    assert enc["key_id"] == key_id
    dec = out("decrypt", d / "t.luks", d / "t.raw", "--key-id", str(key_id), *ks)
    assert dec["source"] == str(d / "t.luks") and dec["key_id"] == key_id
    rek = out("rekey", d / "t.luks", "--key-id", str(key_id), "--add", "--new-passphrase-file",
              env["pw"], *ks, *FAST)
    assert rek["target"] == str(d / "t.luks") and "image" not in rek
    assert out("inspect", d / "t.luks")["source"] == str(d / "t.luks")


def test_sign_json_has_one_shape(env: dict[str, Path]) -> None:
    d = env["dir"]
    base = ["sign", d / "disk.raw", "--key", d / "s.key", "--cert", d / "s.crt", "--cert-uuid",
            "0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11"]
    plain = out(*base)
    written = out(*base, "--properties-out", d / "sig.json")
    assert set(plain) == set(written) == {"source", "properties", "properties_out"}
    assert plain["properties_out"] is None and written["properties_out"] == str(d / "sig.json")
    verified = out("verify", d / "disk.raw", "--properties", d / "sig.json", "--cert",
                   d / "s.crt")
    assert verified["source"] == str(d / "disk.raw")


@pytest.mark.parametrize(("argv", "code"), [
    (["decrypt", "missing.luks", "x.raw", "--passphrase-file", "pw"], 1),
    (["encrypt", "disk.raw", "t.luks"], 2),  # no terminal, no passphrase
    (["encrypt", "disk.raw", "t.luks", "--bogus"], 2),  # argparse's own usage error
    (["inspect", "disk.raw"], 3),
    (["keys", "show", "0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11"], 5),
])
def test_failure_with_json_prints_an_error_object(
        env: dict[str, Path], argv: list[str], code: int) -> None:
    d = env["dir"]
    extra = ["--keystore", str(env["keys"])] if argv[0] == "keys" else []
    words = [str(d / a) if (d / a).exists() or a.endswith((".luks", ".raw")) else a
             for a in argv]
    # A session of its own: no controlling terminal to prompt on, whoever runs the tests.
    proc = subprocess.run([*IMGCRYPT, *words, *extra, "--json"], capture_output=True,
                          stdin=subprocess.DEVNULL, start_new_session=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    document = json.loads(proc.stdout)
    assert set(document) == {"error"}
    assert document["error"]["code"] == code
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    assert proc.stderr.decode().startswith("imgcrypt: error: ")
