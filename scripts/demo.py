"""`make demo`: a guided tour of imgcrypt on a generated sample disk image.

Everything happens under demo-out/ with a keystore of its own, so the demo touches nothing
else. Each step prints the command a person would type and what came of it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
IMGCRYPT = Path(sys.executable).parent / "imgcrypt"
SIZE = 32 << 20


def say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def run(*args: str, show: bool = True) -> str:
    shown = " ".join(shlex.quote(str(a).replace(str(OUT) + "/", "")) for a in args)
    print(f"$ imgcrypt {shown}")
    proc = subprocess.run([str(IMGCRYPT), *args], capture_output=True, text=True, cwd=OUT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo step failed with exit code {proc.returncode}")
    if show and proc.stdout.strip():
        print("\n".join("  " + line for line in proc.stdout.rstrip().splitlines()))
    return proc.stdout


def sample_disk(path: Path) -> None:
    """A small disk image with an MBR signature, some text and some random blocks."""
    block = bytearray(SIZE)
    block[510:512] = b"\x55\xaa"
    text = b"imgcrypt demo disk - this sentence is the secret guest data.\n" * 64
    block[1 << 20 : (1 << 20) + len(text)] = text
    block[8 << 20 : 12 << 20] = os.urandom(4 << 20)
    path.write_bytes(bytes(block))


def identity(name: str, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
             directory: Path) -> tuple[Path, Path]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                     False), critical=True)
        .sign(key, algorithm)
    )
    key_path = directory / f"{name}.key.pem"
    cert_path = directory / f"{name}.cert.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def python_steps(disk: Path, keystore: Path, original: str) -> None:
    import imgcrypt

    keys = imgcrypt.LocalKeyStore(keystore)
    print('$ image = imgcrypt.encrypt_image("disk.raw", "py.luks", key_manager=keys, '
          "new_key=imgcrypt.DEFAULT_KEY_ORDER)")
    image = imgcrypt.encrypt_image(str(disk), str(OUT / "py.luks"), key_manager=keys,
                                   new_key=imgcrypt.DEFAULT_KEY_ORDER,
                                   options=imgcrypt.FormatOptions(iter_time_ms=1000))
    print(f"  key {image.key_id}, os_decrypt_size {image.property_dict()['os_decrypt_size']}")
    print('$ imgcrypt.decrypt_image("py.luks", "py.raw", key_manager=keys, '
          "key_id=image.key_id, size=image.decrypt_size)")
    imgcrypt.decrypt_image(str(OUT / "py.luks"), str(OUT / "py.raw"), key_manager=keys,
                           key_id=image.key_id, size=image.decrypt_size)
    if hashlib.sha256((OUT / "py.raw").read_bytes()).hexdigest() != original:
        raise SystemExit("demo failed: the image decrypted from Python differs")
    print("  py.raw identical to disk.raw")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    keystore = ["--keystore", str(OUT / "keystore")]

    say("1. A sample disk image (32 MiB raw, with an MBR and some guest data)")
    disk = OUT / "disk.raw"
    sample_disk(disk)
    original = hashlib.sha256(disk.read_bytes()).hexdigest()
    print(f"  disk.raw  sha256 {original[:16]}...")

    say("2. Encrypt it as LUKS1 with a new key from the local keystore")
    print("  (LUKS1 because qemu-img, Cinder, Nova and Glance's upload check read LUKS1 only)")
    result = json.loads(run("encrypt", str(disk), str(OUT / "disk.luks"), "--new-key",
                            *keystore, "--iter-time", "1000", "--json", show=False))
    key_id = result["key_id"]
    print(f"  key id {key_id} (symmetric, AES, 512 bits; the LUKS passphrase is its hex)")
    print(f"  LUKS{result['format'][-1]} {result['cipher']}, payload {result['payload_size']} "
          f"bytes at offset {result['payload_offset']}")

    say("3. Look at the header (no passphrase needed)")
    run("inspect", str(OUT / "disk.luks"))

    say("4. Sign it twice: Glance mode (what cursive verifies today) and imgcrypt mode")
    glance_key, glance_cert = identity("glance-signer", ec.generate_private_key(ec.SECP384R1()),
                                       OUT)
    modern_key, modern_cert = identity("modern-signer", ed25519.Ed25519PrivateKey.generate(), OUT)
    cert_id = json.loads(run("keys", "--json", "create", "--type", "certificate",
                             "--payload-file", str(glance_cert), *keystore,
                             show=False))["key_id"]
    print(f"  stored the Glance signing certificate in the keystore as {cert_id}")
    run("sign", str(OUT / "disk.luks"), "--key", str(glance_key), "--cert-id", cert_id,
        "--mode", "glance", "--hash", "SHA-384", *keystore,
        "--properties-out", str(OUT / "glance-signature.json"), show=False)
    bound = ["--property", f"os_encrypt_key_id={key_id}", "--property",
             f"cinder_encryption_key_id={key_id}", "--property", "os_encrypt_format=LUKSv1",
             "--property", f"os_decrypt_size={result['payload_size']}",
             "--property", "disk_format=raw", "--property", "container_format=bare"]
    run("sign", str(OUT / "disk.luks"), "--key", str(modern_key), "--cert", str(modern_cert),
        "--mode", "imgcrypt", *bound, "--properties-out", str(OUT / "imgcrypt-signature.json"),
        show=False)
    for name in ("glance-signature.json", "imgcrypt-signature.json"):
        props = json.loads((OUT / name).read_text())
        longest = max(len(v) for v in props.values())
        print(f"  {name}: {len(props)} properties, longest value {longest} characters")

    say("5. Verify both signatures (certificate dates, key usage and algorithms are checked)")
    run("verify", str(OUT / "disk.luks"), "--properties", str(OUT / "glance-signature.json"),
        *keystore)
    run("verify", str(OUT / "disk.luks"), "--properties", str(OUT / "imgcrypt-signature.json"),
        "--cert", str(modern_cert))

    say("6. The properties to attach, and the command a person would run")
    args = run("properties", str(OUT / "disk.luks"), "--key-id", key_id, *keystore,
               "--signature", str(OUT / "glance-signature.json"), "--size",
               str(result["payload_size"]), show=False).strip()
    print("$ openstack image create --file disk.luks --disk-format raw "
          "--container-format bare \\")
    for part in shlex.split(args)[1::2]:
        shown = part if len(part) < 90 else part[:87] + "..."
        print(f"      --property {shlex.quote(shown)} \\")
    print("      demo-image")

    say("7. Decrypt with the key from the keystore and compare")
    run("decrypt", str(OUT / "disk.luks"), str(OUT / "disk.out"), "--key-id", key_id,
        *keystore, "--size", str(result["payload_size"]))
    decrypted = hashlib.sha256((OUT / "disk.out").read_bytes()).hexdigest()
    if decrypted != original:
        raise SystemExit("demo failed: the decrypted image differs from the original")
    print(f"  disk.out  sha256 {decrypted[:16]}...  identical to disk.raw")

    say("8. The same from Python: one recipe call each (import imgcrypt)")
    python_steps(disk, OUT / "keystore", original)

    say("Done. Everything is in demo-out/ (its own local keystore in demo-out/keystore); the "
        "README walks through the same steps.")


if __name__ == "__main__":
    main()
