"""inspect says "decryptable" only when decrypt will succeed, and names the missing piece otherwise:
one test per refusal class, on headers the real tools made (or cryptsetup loads after an edit).

Every refusal on the command line is one line on stderr with exit 3, naming the algorithm and,
for a cipher OpenSSL lacks, the tools that open it and the command that converts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import headerkit as hk
from tests.helpers.util import (
    dump_volume_key,
    imgcrypt,
    qemu_secret_args,
    run_qemu_img,
    secret_file,
)

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


def test_cipher_openssl_lacks_names_tools_and_conversion(tmp_path: Path, qemu_img: str) -> None:
    """qemu-img's serpent image: not decryptable, and decrypt says who opens it and how to
    convert it."""
    key = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "serpent.luks"
    made = run_qemu_img(["create", "-f", "luks", *qemu_secret_args(key), "-o",
                         "key-secret=s0,cipher-alg=serpent-256,cipher-mode=xts,"
                         "ivgen-alg=plain64,iter-time=10", str(image), "1M"])
    assert made.returncode == 0, made.stderr
    info = _verdict(image)
    assert info["decryptable"] is False
    assert any("serpent" in reason for reason in info["unsupported"])  # type: ignore[attr-defined]
    _refused(image, key, "serpent-xts-plain64", "nettle or gcrypt",
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


def _cryptsetup_luks1(tmp_path: Path, cryptsetup: str, hash_name: str) -> tuple[Path, Path]:
    """A 3 MiB LUKS1 image cryptsetup formats with ``hash_name``, and its passphrase file."""
    key = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / f"{hash_name}.luks"
    with open(image, "wb") as f:
        f.truncate(3 << 20)
    subprocess.run([cryptsetup, "luksFormat", "-q", "--type", "luks1", "--hash", hash_name,
                    "--key-file", str(key), "--pbkdf-force-iterations", "1000", str(image)],
                   check=True, capture_output=True, timeout=120)
    return image, key


def test_sha3_384_luks1_is_decryptable_and_decrypts(tmp_path: Path, cryptsetup: str) -> None:
    """The issue's example: inspect called it decryptable and unlock refused it (the cost
    table lacked the hash). Now both say yes."""
    image, key = _cryptsetup_luks1(tmp_path, cryptsetup, "sha3-384")
    assert _verdict(image)["decryptable"] is True
    _decrypts(image, key)


# Run with the C extensions absent, as an install without a compiler has them: the import of
# each raises ImportError, exactly as when the sdist built none.
PURE_UNLOCK = """
import sys
sys.modules["imgcrypt.crypto._evpxts"] = None
sys.modules["imgcrypt.crypto._xtsmul"] = None
import hashlib
from imgcrypt.luks.unlock import unlock_stream
try:
    hashlib.new("whirlpool")
except ValueError:
    print("hashlib lacks whirlpool")
with open(sys.argv[1], "rb") as f:
    print(unlock_stream(f, open(sys.argv[2], "rb").read()).master_key.hex())
print("_evpxts" in str(sys.modules.get("imgcrypt.crypto.backend").__dict__.get("_evpxts")))
"""


def test_whirlpool_without_the_c_extension(tmp_path: Path, cryptsetup: str) -> None:
    """A cryptsetup whirlpool image on the pure path: hashlib (the system OpenSSL without its
    legacy provider) lacks whirlpool, and imgcrypt computes it through `cryptography`'s OpenSSL,
    recovering cryptsetup's volume key."""
    image, key = _cryptsetup_luks1(tmp_path, cryptsetup, "whirlpool")
    proc = subprocess.run([sys.executable, "-c", PURE_UNLOCK, str(image), str(key)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lacks, master_key, loaded = proc.stdout.splitlines()
    assert lacks == "hashlib lacks whirlpool"
    assert bytes.fromhex(master_key) == dump_volume_key(cryptsetup, image, key)
    assert loaded == "False"  # the backend ran without the C module
