"""``imgcrypt sign`` and ``imgcrypt verify`` end to end: exit codes, messages, files."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imgcrypt.cli.main import main
from imgcrypt.keys.secret import Secret
from tests.helpers.pki import NOW, cert_pem, key, key_pem, make_cert

AT = ["--at", NOW.isoformat()]
UUID = "4c1a3c6e-2f1e-4d8e-9a57-0a4c3e1f9b21"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(1 << 20) + b"tail")
    paths = {"image": image, "dir": tmp_path}
    for kind in ("p384", "rsa2048", "ed25519", "mldsa87"):
        (tmp_path / f"{kind}.key").write_bytes(key_pem(key(kind)))
        (tmp_path / f"{kind}.crt").write_bytes(cert_pem(make_cert(key(kind))))
        paths[kind] = tmp_path / f"{kind}.key"
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def sign(capsys: Any, files: dict[str, Path], kind: str, *extra: str) -> dict[str, str]:
    out_file = files["dir"] / f"{kind}.props.json"
    code, _out, err = run(
        capsys,
        "sign",
        files["image"],
        "--key",
        files[kind],
        "--cert",
        files["dir"] / f"{kind}.crt",
        "--properties-out",
        out_file,
        "--force",
        *extra,
    )
    assert code == 0, err
    return json.loads(out_file.read_text())


def test_glance_sign_and_verify(capsys: Any, files: dict[str, Path]) -> None:
    properties = sign(capsys, files, "rsa2048", "--cert-uuid", UUID)
    assert properties["img_signature_key_type"] == "RSA-PSS"
    assert properties["img_signature_certificate_uuid"] == UUID
    assert len(properties["img_signature"]) == 344
    code, out, err = run(
        capsys,
        "verify",
        files["image"],
        "--properties",
        files["dir"] / "rsa2048.props.json",
        "--cert",
        files["dir"] / "rsa2048.crt",
        *AT,
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["valid"] is True and report["schemes"][0]["scheme"] == "glance"


def test_stdout_is_the_flat_property_object(capsys: Any, files: dict[str, Path]) -> None:
    code, out, _ = run(capsys, "sign", files["image"], "--key", files["p384"], "--cert-uuid", UUID)
    assert code == 0
    properties = json.loads(out)
    assert all(isinstance(v, str) for v in properties.values())
    assert properties["img_signature_key_type"] == "ECC_SECP384R1"


def test_imgcrypt_mode_binds_properties_and_keeps_the_limit(
    capsys: Any, files: dict[str, Path]
) -> None:
    properties = sign(
        capsys,
        files,
        "mldsa87",
        "--mode",
        "imgcrypt",
        "--max-value-length",
        "100",
        "--property",
        "os_encrypt_key_id=0b6a1a3e-3b0c-4c55-8e1a-6a3b0c7a1e11",
        "--property",
        "disk_format=raw",
        "--hash",
        "SHA3-512",
    )
    assert max(len(v) for v in properties.values()) <= 100
    assert properties["imgcrypt_sign_hash"] == "sha3-512"
    props_file = files["dir"] / "mldsa87.props.json"
    verify = [
        "verify",
        files["image"],
        "--properties",
        props_file,
        "--cert",
        files["dir"] / "mldsa87.crt",
        *AT,
    ]
    code, out, err = run(capsys, *verify)
    assert code == 0, err
    assert "ml-dsa-87 sha3-512" in out
    props_file.write_text(json.dumps({**properties, "os_encrypt_key_id": "other"}))
    code, _, err = run(capsys, *verify)
    assert code == 4
    assert err.startswith("imgcrypt: error: a signed property") and err.count("\n") == 1


def test_tampered_image_exits_4(capsys: Any, files: dict[str, Path]) -> None:
    sign(capsys, files, "ed25519", "--mode", "imgcrypt")
    with open(files["image"], "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 1]))
    code, _, err = run(
        capsys,
        "verify",
        files["image"],
        "--properties",
        files["dir"] / "ed25519.props.json",
        "--cert",
        files["dir"] / "ed25519.crt",
        *AT,
    )
    assert code == 4
    assert "does not match" in err


def test_expired_certificate_and_untrusted_chain(capsys: Any, files: dict[str, Path]) -> None:
    sign(capsys, files, "p384", "--mode", "imgcrypt")
    base = [
        "verify",
        files["image"],
        "--properties",
        files["dir"] / "p384.props.json",
        "--cert",
        files["dir"] / "p384.crt",
    ]
    later = (NOW + dt.timedelta(days=400)).isoformat()
    code, _, err = run(capsys, *base, "--at", later)
    assert code == 4 and "expired" in err
    other = files["dir"] / "other-ca.pem"
    other.write_bytes(cert_pem(make_cert(key("p256-ca"), "ca", ca=True)))
    code, _, err = run(capsys, *base, *AT, "--trust", other)
    assert code == 4 and "no trusted issuer" in err
    code, _, err = run(capsys, *base, *AT, "--trust", files["dir"] / "p384.crt")
    assert code == 0, err


def test_duplicate_property_keys_exit_4(capsys: Any, files: dict[str, Path]) -> None:
    sign(capsys, files, "p384", "--cert-uuid", UUID)
    text = (files["dir"] / "p384.props.json").read_text()
    doubled = files["dir"] / "doubled.json"
    doubled.write_text(text.replace("{", '{"img_signature_key_type": "RSA-PSS",', 1))
    code, _, err = run(
        capsys,
        "verify",
        files["image"],
        "--properties",
        doubled,
        "--cert",
        files["dir"] / "p384.crt",
        *AT,
    )
    assert code == 4 and "more than once" in err


def test_existing_output_is_refused_without_force(capsys: Any, files: dict[str, Path]) -> None:
    target = files["dir"] / "exists.json"
    target.write_text("keep")
    code, _, _err = run(
        capsys,
        "sign",
        files["image"],
        "--key",
        files["p384"],
        "--cert-uuid",
        UUID,
        "--properties-out",
        target,
    )
    assert code == 2 and target.read_text() == "keep"
    assert not [p for p in files["dir"].iterdir() if p.name.startswith(".exists")]


def test_usage_errors(capsys: Any, files: dict[str, Path]) -> None:
    image, p384 = files["image"], files["p384"]
    cases = [
        ["sign", image, "--key", p384],  # Glance mode without a certificate id
        ["sign", image, "--key", files["ed25519"], "--cert-uuid", UUID],  # cursive cannot
        ["sign", image, "--key", p384, "--cert-uuid", UUID, "--property", "disk_format=raw"],
        ["sign", image, "--key", p384, "--mode", "imgcrypt", "--algorithm", "ed25519"],
        ["sign", image, "--key", p384, "--mode", "imgcrypt", "--property", "x=y"],
        ["sign", image, "--key", p384, "--cert", files["dir"] / "rsa2048.crt", "--cert-uuid", UUID],
        [
            "sign",
            image,
            "--key",
            files["rsa2048"],
            "--cert-uuid",
            UUID,
            "--max-value-length",
            "255",
        ],
    ]
    for argv in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.startswith("imgcrypt: error: ")


def test_encrypted_key_with_passphrase_file(capsys: Any, files: dict[str, Path]) -> None:
    secret = b"correct horse battery"
    locked = files["dir"] / "locked.key"
    locked.write_bytes(key_pem(key("p384"), secret))
    good = files["dir"] / "good.pass"
    good.write_bytes(secret)  # the bytes exactly, as cryptsetup's --key-file reads them
    good.chmod(0o600)
    bad = files["dir"] / "bad.pass"
    bad.write_bytes(b"wrong\n")
    base = ["sign", files["image"], "--key", locked, "--cert-uuid", UUID]
    code, _out, err = run(capsys, *base, "--key-passphrase-file", good)
    assert code == 0, err
    code, _, err = run(capsys, *base, "--key-passphrase-file", bad)
    assert code == 4 and secret.decode() not in err
    # No terminal here: refusing beats hanging on a prompt.
    code, _, err = subprocess_run(*base)
    assert code == 2 and "passphrase" in err


def subprocess_run(*argv: Any) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "imgcrypt", *map(str, argv)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal: no prompt
        cwd=Path(__file__).resolve().parents[2],
    )
    return done.returncode, done.stdout, done.stderr


def test_certificate_from_the_local_key_manager(capsys: Any, files: dict[str, Path]) -> None:
    from imgcrypt.keys.local import LocalKeyStore

    store_dir = files["dir"] / "keystore"
    store = LocalKeyStore(store_dir)
    cert_id = store.store(
        Secret(payload=(files["dir"] / "p384.crt").read_bytes(), secret_type="certificate")
    )
    km = ["--key-manager", "local", "--keystore", store_dir]
    code, out, err = run(
        capsys, "sign", files["image"], "--key", files["p384"], "--cert-id", cert_id, *km
    )
    assert code == 0, err
    props = files["dir"] / "km.json"
    props.write_text(out)
    assert json.loads(out)["img_signature_certificate_uuid"] == cert_id
    # The certificate id in the properties is enough to find the certificate.
    code, _, err = run(capsys, "verify", files["image"], "--properties", props, *AT, *km)
    assert code == 0, err


def test_stdin_image_through_a_subprocess(files: dict[str, Path]) -> None:
    props = files["dir"] / "stdin.json"
    with open(files["image"], "rb") as image:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "imgcrypt",
                "sign",
                "-",
                "--key",
                str(files["ed25519"]),
                "--mode",
                "imgcrypt",
                "--properties-out",
                str(props),
            ],
            stdin=image,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    assert done.returncode == 0, done.stderr
    code, _, err = subprocess_run(
        "verify", files["image"], "--properties", props, "--cert", files["dir"] / "ed25519.crt", *AT
    )
    assert code == 0, err


def test_dsa_signed_image_verifies_with_one_note_and_no_library_warning(
        files: dict[str, Path]) -> None:
    """cryptography 51 deprecates DSA. A legacy Glance image signed with DSA still verifies
    (with --allow-legacy), and the person reads one note naming the image's algorithm, not the
    library's warning; without --allow-legacy it is refused in one line."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    from imgcrypt.legacy import legacy_dsa

    dsa_key = key("dsa2048")
    image = files["image"].read_bytes()
    with legacy_dsa():
        signature = dsa_key.sign(_sha256(image), Prehashed(hashes.SHA256()))
    props = files["dir"] / "dsa.json"
    props.write_text(json.dumps({
        "img_signature": base64.b64encode(signature).decode(),
        "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "DSA",
        "img_signature_certificate_uuid": UUID,
    }))
    cert = files["dir"] / "dsa.crt"
    cert.write_bytes(cert_pem(make_cert(dsa_key)))
    verify = [sys.executable, "-m", "imgcrypt", "verify", str(files["image"]),
              "--properties", str(props), "--cert", str(cert), *AT]
    ok = subprocess.run([*verify, "--allow-legacy"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ("imgcrypt: note: this image is signed with DSA, which cryptography "
                         "deprecates; ask its publisher to re-sign it with RSA-PSS or ECDSA\n")
    refused = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 4
    assert refused.stderr.startswith("imgcrypt: error: ") and refused.stderr.count("\n") == 1
    assert "Deprecat" not in refused.stderr


def _sha256(data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes

    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()
