"""Every LUKS image cryptsetup and qemu-img make here, opened by imgcrypt: the tools' matrix.

For each cipher spec and hash, the tool is asked to make an image; what the tool itself refuses
is recorded with its reason (which must be one of this machine's known reasons). Of what it makes:

* cryptsetup (no device-mapper here, so it cannot write data): ``open --test-passphrase`` must
  accept the image, the volume key comes from ``luksDump --dump-volume-key``, and imgcrypt's
  unlock must recover the same key, which proves its keyslot decryption against cryptsetup's
  own keyslot encryption in that cipher spec (LUKS1 and LUKS2 keyslots use the segment's
  cipher). The payload is then written by an oracle in this file, per sector with
  `cryptography`'s own modes and dm-crypt's IV rules written out here (not imgcrypt's code);
  where qemu-img knows the LUKS1 spec, qemu-img writes it instead (``convert -n`` into the
  image), reads it back, and the oracle must produce the very ciphertext qemu wrote. imgcrypt's
  plaintext must be byte-identical.
* qemu-img's own images where cryptsetup cannot make the spec here (cast5, ecb with an IV
  generator, aes-192-xts, serpent, twofish, md5, ripemd160): qemu-img benchmarks PBKDF2 for
  half a second of CPU on every creation, so these were made once by
  fixtures/make-qemu-matrix.sh (``create``, known plaintext through its encryption with
  ``convert -n``) and one cast5 image is made live. qemu-img reads each back here (``convert``
  to raw); imgcrypt's plaintext must be byte-identical.

Images whose cipher or hash OpenSSL lacks (serpent, twofish) must be called not decryptable by
the header verdict and refused at unlock with a message that names the cipher and a way out.
The counts are printed by the last test (run with ``-s`` to see them).
"""

from __future__ import annotations

import collections
import hashlib
import io
import lzma
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imgcrypt.errors import UnsupportedError
from imgcrypt.luks.rules import HeaderRuleError
from imgcrypt.luks.transfer import decrypt_payload
from imgcrypt.luks.unlock import read_header, unlock_stream

from .dmcrypt_oracle import OPENSSL_CIPHERS, ctr_by_blocks, oracle_encrypt
from .luksdump import parse_luks1, parse_luks2
from .util import dump_volume_key, qemu_secret_args, secret_file, test_passphrase

PASSPHRASE = b"matrix passphrase"
PAYLOAD = 64 << 10

IVGENS = ("plain", "plain64", "plain64be", "essiv:sha256", "benbi", "null")
# (cipher spec, key bits) candidates for cryptsetup, with sha256.
CS_CIPHERS = [
    *[(f"{c}-xts-{iv}", 2 * bits) for c, bits in (("aes", 256), ("camellia", 256), ("sm4", 128),
                                                   ("serpent", 256), ("twofish", 256))
      for iv in IVGENS],
    *[(f"{c}-{m}-{iv}", bits) for c, bits in (("aes", 256), ("camellia", 256), ("sm4", 128),
                                               ("cast5", 128), ("serpent", 256))
      for m in ("cbc", "ctr") for iv in IVGENS],
    ("aes-xts-plain64", 256), ("aes-cbc-essiv:sha256", 128), ("aes-cbc-plain64", 192),
    ("aes-ecb", 256), ("camellia-ecb", 128), ("cast5-ecb", 128), ("sm4-ecb", 128),
    ("aes-cbc-essiv:sha3-256", 256), ("aes-xts-essiv:blake2s-256", 512),
]
# Hashes for PBKDF2, the AF splitter and the digest (with aes-xts-plain64).
CS_HASHES = ["sha1", "sha224", "sha256", "sha384", "sha512", "sha3-224", "sha3-256", "sha3-384",
             "sha3-512", "blake2b-512", "blake2s-256", "ripemd160", "whirlpool", "sm3", "md5",
             "stribog512"]
CS_CASES = [(v, spec, bits, "sha256") for v in (1, 2) for spec, bits in CS_CIPHERS] + [
    (v, "aes-xts-plain64", 512, h) for v in (1, 2) for h in CS_HASHES]

# Images only qemu-img makes here (cryptsetup cannot: no kernel cast5/serpent/twofish, no ecb
# with an IV generator, no aes-192-xts without device-mapper, md5 refused for LUKS1).
QEMU_CASES = [("cast5-128", mode, iv, "sha256") for mode in ("cbc", "ecb", "ctr")
              for iv in ("plain", "plain64")] + [
    ("aes-256", "ecb", "plain64", "sha256"), ("aes-128", "ecb", "essiv", "sha256"),
    ("aes-192", "xts", "plain64", "sha256"), ("serpent-256", "xts", "plain64", "sha256"),
    ("twofish-256", "cbc", "essiv", "sha256"),
    ("aes-256", "xts", "plain64", "md5"), ("aes-256", "xts", "plain64", "ripemd160")]
# The specs and hashes qemu's LUKS driver reads (BRIEF section 10).
QEMU_KNOWS_CIPHERS = ("aes", "cast5", "serpent", "twofish")
QEMU_KNOWS_HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")

# Why cryptsetup 2.6 refuses to make an image here: ciphers it can only probe through the
# kernel's crypto API (no device-mapper in this sandbox), md5 for LUKS1 (under 20 bytes), and
# stribog512 (not in OpenSSL). A refusal for any other reason fails the test.
TOOL_REFUSALS = (
    "Cannot initialize device-mapper. Is dm_mod kernel module loaded?",
    "Requested LUKS hash md5 is not supported.",
    "Failed to set pbkdf parameters.",
)
# The cells the tool refused, with its reason; printed by test_matrix_counts.
REFUSED: list[str] = []

# (tool, LUKS version) -> outcome -> count; printed by test_matrix_counts.
COUNTS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


def test_the_oracle_agrees_with_cryptography_s_ctr() -> None:
    key, iv, data = os.urandom(32), os.urandom(16), os.urandom(512)
    assert ctr_by_blocks(algorithms.AES, key, iv, data) == \
        Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(data)


# -- cryptsetup -----------------------------------------------------------------------------------

def _opens(spec: str, hash_name: str) -> bool:
    """Should imgcrypt open it: is the cipher OpenSSL's and the hash computable by OpenSSL?"""
    if spec.split("-")[0] not in OPENSSL_CIPHERS:
        return False
    try:
        hashlib.new({"sha3-224": "sha3_224", "sha3-256": "sha3_256", "sha3-384": "sha3_384",
                     "sha3-512": "sha3_512", "blake2b-512": "blake2b",
                     "blake2s-256": "blake2s"}.get(hash_name, hash_name))
    except ValueError:
        return hash_name == "whirlpool"  # in OpenSSL's legacy provider, which cryptsetup loads
    return True


@pytest.mark.parametrize("version, spec, bits, hash_name", CS_CASES,
                         ids=[f"luks{v}-{s}-{b}-{h}" for v, s, b, h in CS_CASES])
def test_cryptsetup_image(tmp_path: Path, cryptsetup: str, version: int, spec: str, bits: int,
                          hash_name: str) -> None:
    tool = f"cryptsetup luks{version}"
    keyfile = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "image.luks"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    sizes = (["--luks2-metadata-size", "16k", "--luks2-keyslots-size", "512k",
              "--sector-size", "4096"] if version == 2 else [])
    made = subprocess.run(
        [cryptsetup, "luksFormat", "--batch-mode", "--type", f"luks{version}", "--cipher", spec,
         "--key-size", str(bits), "--hash", hash_name, "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000", *sizes, "--key-file", str(keyfile), str(image)],
        capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        # Not a skip: the cell's outcome is the tool's refusal, for one of the reasons this
        # machine gives; any other refusal (or a tool that starts accepting) fails or is tested.
        reason = made.stderr.strip().splitlines()[-1]
        assert reason in TOOL_REFUSALS, f"cryptsetup refuses {spec} {bits} {hash_name}: {reason}"
        COUNTS[tool]["refused by the tool"] += 1
        REFUSED.append(f"cryptsetup luks{version} {spec} {bits} {hash_name}: {reason}")
        return
    COUNTS[tool]["made"] += 1
    assert test_passphrase(cryptsetup, image, keyfile) == 0
    volume_key = dump_volume_key(cryptsetup, image, keyfile)
    dumped = subprocess.run([cryptsetup, "luksDump", str(image)], capture_output=True, text=True,
                            check=True, timeout=120).stdout
    if version == 1:
        offset, sector_size = parse_luks1(dumped)["payload_offset"], 512
    else:
        segment = parse_luks2(dumped)["segments"][0]
        offset, sector_size = segment["offset"], segment["sector_size"]
    header, _ = read_header(io.BytesIO(image.read_bytes()))
    verdict = header.describe()
    if not _opens(spec, hash_name):
        assert not verdict["decryptable"], verdict
        with open(image, "rb") as f, pytest.raises(UnsupportedError) as err:
            unlock_stream(f, PASSPHRASE)
        assert "\n" not in str(err.value)
        COUNTS[tool]["refused by imgcrypt (cipher or hash not in OpenSSL)"] += 1
        return
    assert verdict["decryptable"], verdict["unsupported"]
    plain = os.urandom(PAYLOAD)
    expected = oracle_encrypt(spec, volume_key, plain, sector_size)
    if version == 1 and _qemu_knows(spec, hash_name) and _qemu_write(image, keyfile, plain,
                                                                     tmp_path):
        # qemu-img's own encryption wrote the payload; the oracle must agree with it
        assert _qemu_read(image, keyfile, tmp_path)[:PAYLOAD] == plain
        with open(image, "rb") as f:
            f.seek(offset)
            assert f.read(PAYLOAD) == expected
        COUNTS[tool]["payload written by qemu-img"] += 1
    else:
        with open(image, "r+b") as f:
            f.seek(offset)
            f.write(expected)
    with open(image, "rb") as f:
        opened = unlock_stream(f, PASSPHRASE)
        assert opened.master_key == volume_key
        out = io.BytesIO()
        decrypt_payload(opened, f, out, size=PAYLOAD)
    assert out.getvalue() == plain
    COUNTS[tool]["opened byte-identical"] += 1


def _qemu_knows(spec: str, hash_name: str) -> bool:
    name, chaining, ivgen = [*spec.split("-", 2), ""][:3]
    generator, _, essiv_hash = ivgen.partition(":")
    return (name in QEMU_KNOWS_CIPHERS and hash_name in QEMU_KNOWS_HASHES
            and chaining in ("xts", "cbc", "ctr") and generator in ("plain", "plain64", "essiv")
            and essiv_hash in ("", *QEMU_KNOWS_HASHES))


def _image_opts(image: Path) -> str:
    return f"driver=luks,key-secret=s0,file.filename={image}"


def _qemu_write(image: Path, secret: Path, plain: bytes, tmp_path: Path) -> bool:
    """Write ``plain`` as the image's payload through qemu-img; False where qemu-img 7.2 aborts
    (aes-192: an alignment assertion in its crypto/block.c), and then nothing is written."""
    raw = tmp_path / "plain.raw"
    raw.write_bytes(plain)
    wrote = _qemu_img(["convert", "-n", *qemu_secret_args(secret), "-f", "raw", str(raw),
                       "--target-image-opts", _image_opts(image)])
    if wrote.returncode != 0 and "Assertion" in wrote.stderr:
        return False
    assert wrote.returncode == 0, wrote.stderr
    return True


def _qemu_read(image: Path, secret: Path, tmp_path: Path) -> bytes:
    back = tmp_path / "back.raw"
    read = _qemu_img(["convert", *qemu_secret_args(secret), "--image-opts", _image_opts(image),
                      "-O", "raw", str(back)])
    assert read.returncode == 0, read.stderr
    return back.read_bytes()


# -- qemu-img -------------------------------------------------------------------------------------

def _qemu_img(args: list[str]) -> subprocess.CompletedProcess[str]:
    """qemu-img, retrying its spurious "Unable to get accurate CPU usage" (iter-time)."""
    for _ in range(30):
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)
        if proc.returncode == 0 or "accurate CPU usage" not in proc.stderr:
            return proc
    return proc


FIXTURES = Path(__file__).parent.parent / "fixtures"
FIXTURE_PLAIN = (b"imgcrypt qemu-img matrix fixture\n" * 512)[:16384]


def _check_qemu_image(image: Path, secret: Path, plain: bytes, alg: str, hash_name: str,
                      tmp_path: Path, tool: str) -> None:
    """qemu-img's plaintext (``plain``, which it wrote) and imgcrypt's must be identical, or
    imgcrypt must refuse what OpenSSL lacks, naming the cipher and the way out."""
    COUNTS[tool]["made"] += 1
    theirs = _qemu_read(image, secret, tmp_path)
    assert theirs[:len(plain)] == plain
    if hash_name == "md5":
        # A 16-byte hash breaks cryptsetup's LUKS1 rule (a digest of at least 20 bytes):
        # cryptsetup refuses the header, and so does imgcrypt, naming the rule.
        dumped = subprocess.run(["cryptsetup", "luksDump", str(image)], capture_output=True,
                                text=True, timeout=120)
        assert dumped.returncode != 0 and "md5" in dumped.stderr
        with pytest.raises(HeaderRuleError, match="luks1-hash"):
            read_header(io.BytesIO(image.read_bytes()))
        COUNTS[tool]["refused by imgcrypt (md5: cryptsetup's LUKS1 rule)"] += 1
        return
    header, _ = read_header(io.BytesIO(image.read_bytes()))
    verdict = header.describe()
    if not _opens(alg.split("-")[0], hash_name):
        assert not verdict["decryptable"], verdict
        with open(image, "rb") as f, pytest.raises(UnsupportedError) as err:
            unlock_stream(f, secret.read_bytes())
        message = str(err.value)
        assert alg.split("-")[0] in message and "cryptsetup reencrypt" in message
        assert "qemu-img convert" in message and "\n" not in message
        COUNTS[tool]["refused by imgcrypt (cipher not in OpenSSL)"] += 1
        return
    assert verdict["decryptable"], verdict["unsupported"]
    with open(image, "rb") as f:
        opened = unlock_stream(f, secret.read_bytes())
        out = io.BytesIO()
        decrypt_payload(opened, f, out, size=len(theirs))
    assert out.getvalue() == theirs
    COUNTS[tool]["opened byte-identical"] += 1


@pytest.mark.parametrize("alg, mode, ivgen, hash_name", QEMU_CASES,
                         ids=[f"{a}-{m}-{i}-{h}" for a, m, i, h in QEMU_CASES])
def test_qemu_img_fixture(tmp_path: Path, qemu_img: str, alg: str, mode: str, ivgen: str,
                          hash_name: str) -> None:
    """Images qemu-img made once (fixtures/make-qemu-matrix.sh), read by qemu-img here."""
    image = tmp_path / "image.luks"
    packed = FIXTURES / "qemu-matrix" / f"{alg}-{mode}-{ivgen}-{hash_name}.luks.xz"
    image.write_bytes(lzma.decompress(packed.read_bytes()))
    secret = FIXTURES / "passphrase.txt"
    _check_qemu_image(image, secret, FIXTURE_PLAIN, alg, hash_name, tmp_path,
                      "qemu-img luks1 (fixtures)")


def test_qemu_img_makes_a_cast5_image_here(tmp_path: Path, qemu_img: str) -> None:
    """One qemu-img creation live (the fixtures' path, on this machine's qemu-img): cast5."""
    secret = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "image.luks"
    made = _qemu_img(["create", "-f", "luks", *qemu_secret_args(secret), "-o",
                      "key-secret=s0,cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=plain64,"
                      "hash-alg=sha1,iter-time=10", str(image), str(PAYLOAD)])
    assert made.returncode == 0, made.stderr
    plain = os.urandom(PAYLOAD)
    assert _qemu_write(image, secret, plain, tmp_path)
    _check_qemu_image(image, secret, plain, "cast5-128", "sha1", tmp_path, "qemu-img luks1")


def test_matrix_counts() -> None:
    """Runs last: what the tools made, what imgcrypt opened and what it refused."""
    for tool, counts in sorted(COUNTS.items()):
        print(f"{tool}: {dict(counts)}")
    for line in REFUSED:
        print(f"refused by the tool: {line}")
    for counts in COUNTS.values():
        refused = sum(n for outcome, n in counts.items()
                      if outcome.startswith("refused by imgcrypt"))
        assert counts["made"] == counts["opened byte-identical"] + refused
