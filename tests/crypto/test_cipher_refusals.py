"""inspect says "decryptable" only when decrypt will succeed, and names the missing piece otherwise:
one test per refusal class, on headers the real tools made (or cryptsetup loads after an edit).

Every refusal on the command line is one line on stderr with exit 3, naming the algorithm and,
for a cipher OpenSSL lacks, the tools that open it and the command that converts it.
"""

from __future__ import annotations

import json
import lzma
import subprocess
from pathlib import Path

from tests.helpers import headerkit as hk
from tests.helpers.util import imgcrypt, secret_file

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PASSPHRASE = b"refusal passphrase"


def _verdict(image: Path) -> dict[str, object]:
    proc = imgcrypt("inspect", image, "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert isinstance(document, dict)
    return document


def _refused(image: Path, passphrase: Path, *words: str) -> str:
    """decrypt refuses, exit 3, one line naming ``words``; no output file is left."""
    target = image.with_suffix(".raw")
    proc = imgcrypt("decrypt", image, target, "--passphrase-file", passphrase)
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert err.startswith("imgcrypt: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not target.exists()
    return err


def _decrypts(image: Path, passphrase: Path) -> None:
    proc = imgcrypt("decrypt", image, image.with_suffix(".raw"), "--passphrase-file", passphrase)
    assert proc.returncode == 0, proc.stderr


def _cryptsetup_loads(cryptsetup: str, image: Path) -> bool:
    return subprocess.run([cryptsetup, "luksDump", str(image)], capture_output=True,
                          timeout=60).returncode == 0


def test_cipher_openssl_lacks_names_tools_and_conversion(tmp_path: Path) -> None:
    """qemu-img's serpent image: not decryptable, and decrypt says who opens it and how to
    convert it."""
    image = tmp_path / "serpent.luks"
    packed = FIXTURES / "qemu-matrix" / "serpent-256-xts-plain64-sha256.luks.xz"
    image.write_bytes(lzma.decompress(packed.read_bytes()))
    info = _verdict(image)
    assert info["decryptable"] is False
    assert any("serpent" in reason for reason in info["unsupported"])  # type: ignore[attr-defined]
    _refused(image, FIXTURES / "passphrase.txt", "serpent-xts-plain64", "nettle or gcrypt",
             "cryptsetup reencrypt --cipher aes-xts-plain64", "qemu-img convert")


def test_iv_generator_of_another_tool(tmp_path: Path, cryptsetup: str) -> None:
    """A LUKS1 header whose mode is loop-AES's lmk (cryptsetup loads it): named, refused."""
    key = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "lmk.luks"
    image.write_bytes(hk.luks1_text(hk.make_luks1(cryptsetup, image, key), 40, "cbc-lmk"))
    assert _cryptsetup_loads(cryptsetup, image)
    info = _verdict(image)
    assert info["decryptable"] is False
    assert any("lmk" in reason for reason in info["unsupported"])  # type: ignore[attr-defined]
    _refused(image, key, "aes-cbc-lmk", "loop-AES", "cryptsetup reencrypt")


def test_keyslot_cipher_is_part_of_the_verdict(tmp_path: Path, cryptsetup: str) -> None:
    """LUKS2: an aes segment whose only keyslot is twofish-encrypted was called decryptable,
    then refused at unlock; now the verdict names the keyslot and its cipher."""
    key = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "slot.luks"
    original = hk.make_luks2(cryptsetup, image, key)
    edit = hk.set_path("keyslots/0/area/encryption", "twofish-xts-plain64")
    image.write_bytes(hk.with_json(original, edit))
    assert _cryptsetup_loads(cryptsetup, image)
    info = _verdict(image)
    assert info["decryptable"] is False
    assert any("keyslot 0" in reason and "twofish" in reason
               for reason in info["unsupported"])  # type: ignore[attr-defined]
    _refused(image, key, "twofish")


def test_hash_no_pbkdf2_can_use(tmp_path: Path, cryptsetup: str) -> None:
    """LUKS2: a keyslot whose PBKDF2 hash is an extendable-output function (shake256, known to
    OpenSSL, so a valid header): named, refused."""
    key = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "shake.luks"
    original = hk.make_luks2(cryptsetup, image, key)
    image.write_bytes(hk.with_json(original, hk.set_path("keyslots/0/kdf/hash", "shake256")))
    info = _verdict(image)
    assert info["decryptable"] is False
    assert any("shake256" in reason for reason in info["unsupported"])  # type: ignore[attr-defined]
    _refused(image, key, "shake256")


def test_sha3_384_luks1_is_decryptable_and_decrypts(tmp_path: Path, cryptsetup: str) -> None:
    """The issue's example: inspect called it decryptable and unlock refused it (the cost
    table lacked the hash). Now both say yes."""
    key = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "sha3.luks"
    with open(image, "wb") as f:
        f.truncate(3 << 20)
    subprocess.run([cryptsetup, "luksFormat", "-q", "--type", "luks1", "--hash", "sha3-384",
                    "--key-file", str(key), "--pbkdf-force-iterations", "1000", str(image)],
                   check=True, capture_output=True, timeout=120)
    assert _verdict(image)["decryptable"] is True
    _decrypts(image, key)
