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
* qemu-img, live: for each selected cell of cipher-alg x cipher-mode x ivgen-alg x
  ivgen-hash-alg x hash-alg, as ``-f luks`` and as qcow2 with ``encrypt.format=luks``, qemu-img
  makes the image (``iter-time=10``), writes random plaintext through its own encryption
  (``convert -n``) and decrypts it back (``convert`` to raw; the passphrase always in a 0600
  file object). imgcrypt's plaintext must be byte-identical to qemu-img's: for LUKS through
  imgcrypt's unlock and decrypt, for qcow2 through imgcrypt's unlock of the LUKS header inside
  the qcow2 and its sector cipher on each cluster (the qcow2 cluster walk is this file's own).
  qemu-img spends seconds of CPU on each image it makes (its PBKDF2 benchmark), so the cells
  are a fixed sample, described above QEMU_CASES and printed by the last test; what qemu-img
  refuses must be refused for one of the reasons in QEMU_REFUSALS.

Images whose cipher or hash OpenSSL lacks (serpent, twofish) must be called not decryptable by
the header verdict and refused at unlock with a message that names the cipher and a way out.
The counts are printed by the last test (run with ``-s`` to see them).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imgcrypt.crypto.sectors import SectorCipher
from imgcrypt.errors import UnsupportedError
from imgcrypt.luks.transfer import decrypt_payload
from imgcrypt.luks.unlock import read_header, unlock_stream
from imgcrypt.qemu.luks import read_qcow2_luks
from tests.helpers.dmcrypt_oracle import OPENSSL_CIPHERS, ctr_by_blocks, oracle_encrypt
from tests.helpers.luksdump import parse_luks1, parse_luks2
from tests.helpers.util import dump_volume_key, qemu_secret_args, secret_file, test_passphrase

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

# The specs and hashes qemu's LUKS driver reads (BRIEF section 10).
QEMU_KNOWS_CIPHERS = ("aes", "cast5", "serpent", "twofish")
QEMU_KNOWS_HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")

# Why cryptsetup 2.6 refuses to make an image here: ciphers it can only probe through the
# kernel's crypto API (no device-mapper in this sandbox), md5 for LUKS1 (under 20 bytes), and
# stribog512 (not in OpenSSL). A refusal for any other reason fails the test. Among the first:
# every sm4 spec and camellia-xts (``--debug``: "Userspace crypto wrapper cannot use
# sm4-xts-plain64 (-95)"; this OpenSSL 3.0 has no SM4-XTS, which came in 3.2, and no
# camellia-xts; for sm4-cbc and sm4-ctr, which it has, the wrapper answers -95 all the same),
# then the kernel probe fails: no device-mapper, and socket(AF_ALG) gives
# EAFNOSUPPORT here. qemu-img 7.2's cipher-alg takes no sm4 or camellia value at all, so no
# tool on this machine makes an sm4 or camellia-xts image; test_sector_modes checks those
# against the oracle of tests/dmcrypt_oracle.py.
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
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "accurate CPU usage" not in proc.stderr:
            return proc
    return proc


# What qemu-img 7.2's LUKS options name: cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg
# (essiv only) and hash-alg, for ``-f luks`` and qcow2's ``encrypt.format=luks``.
QEMU_ALGS = ("aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128", "serpent-128",
             "serpent-192", "serpent-256", "twofish-128", "twofish-192", "twofish-256")
QEMU_MODES = ("ecb", "cbc", "xts", "ctr")
QEMU_IVGENS = ("plain", "plain64", *(f"essiv:{h}" for h in QEMU_KNOWS_HASHES))
QEMU_FORMATS = ("luks", "qcow2")
QEMU_ALL = len(QEMU_ALGS) * len(QEMU_MODES) * len(QEMU_IVGENS) * len(QEMU_KNOWS_HASHES) * 2
# qemu-img spends about 2.3 s of CPU on every image it makes, whatever iter-time says (its PBKDF2
# benchmark runs until it has measured half a second, for the digest and again for the keyslot),
# so the full product (QEMU_ALL cells) would take hours. The sample is fixed, one factor at a
# time around aes-256-xts-plain64 sha256 (printed by test_matrix_counts):
# * every cipher-alg x cipher-mode with plain64 and sha256 (serpent and twofish, which imgcrypt
#   refuses from the header alone: -256 with xts and cbc, -128 with xts);
# * every IV generator (plain, plain64, essiv with every hash) on aes-256 cbc and xts, aes-128
#   ecb and cast5-128 cbc;
# * every hash-alg on aes-256-xts-plain64;
# * qcow2 with encrypt.format=luks: four cells that vary every factor.
QemuCell = tuple[str, str, str, str, str]  # format, cipher-alg, cipher-mode, ivgen, hash-alg


def _sampled_cipher(alg: str, mode: str) -> bool:
    family, _, bits = alg.partition("-")
    return family not in ("serpent", "twofish") or (bits, mode) in (
        ("256", "xts"), ("256", "cbc"), ("128", "xts"))


QEMU_CASES: list[QemuCell] = list(dict.fromkeys([
    *[("luks", a, m, "plain64", "sha256") for a in QEMU_ALGS for m in QEMU_MODES
      if _sampled_cipher(a, m)],
    *[("luks", a, m, iv, "sha256") for a, m in (("aes-256", "cbc"), ("aes-256", "xts"),
                                                ("aes-128", "ecb"), ("cast5-128", "cbc"))
      for iv in QEMU_IVGENS],
    *[("luks", "aes-256", "xts", "plain64", h) for h in QEMU_KNOWS_HASHES],
    ("qcow2", "aes-256", "xts", "plain64", "sha256"),
    ("qcow2", "aes-128", "cbc", "essiv:sha256", "sha512"),
    ("qcow2", "cast5-128", "ctr", "plain", "md5"),
    ("qcow2", "twofish-256", "xts", "plain64", "sha1"),
]))
# Why qemu-img 7.2 refuses a cell here (any other refusal fails the test): des and 3des are
# not LUKS ciphers to it, xts needs a 16-byte block, cast5 takes no essiv, an essiv hash must
# give a key size the cipher takes, and aes-192 cbc/ecb trips an alignment assertion in its
# crypto code.
QEMU_REFUSALS = ("Algorithm 'des' not supported", "Algorithm '3des' not supported",
                 "Unsupported cipher mode xts", "not supported with essiv",
                 "cipher with key size", "Assertion")


def _qemu_options(cell: QemuCell) -> str:
    fmt, alg, mode, ivgen, hash_name = cell
    generator, _, essiv_hash = ivgen.partition(":")
    options = {"key-secret": "s0", "cipher-alg": alg, "cipher-mode": mode,
               "ivgen-alg": generator, "hash-alg": hash_name, "iter-time": "10"}
    if essiv_hash:
        options["ivgen-hash-alg"] = essiv_hash
    prefix = "encrypt." if fmt == "qcow2" else ""
    return ",".join([*(["encrypt.format=luks", "cluster_size=4096"] if fmt == "qcow2" else []),
                     *(f"{prefix}{k}={v}" for k, v in options.items())])


def _image_opts(image: Path, fmt: str = "luks") -> str:
    if fmt == "qcow2":
        return f"driver=qcow2,encrypt.key-secret=s0,file.filename={image}"
    return f"driver=luks,key-secret=s0,file.filename={image}"


@dataclass(frozen=True)
class QemuMade:
    """One cell's outcome at qemu-img's hands: its refusal, or the image holding ``plain``
    (written through qemu-img's encryption) and what qemu-img decrypts it to."""

    refusal: str = ""
    image: Path | None = None
    plain: bytes = b""
    theirs: bytes = b""


def _qemu_make(cell: QemuCell, work: Path, secret: Path) -> QemuMade:
    fmt = cell[0]
    image, raw, back = work / f"image.{fmt}", work / "plain.raw", work / "back.raw"
    made = _qemu_img(["create", "-f", fmt, *qemu_secret_args(secret), "-o", _qemu_options(cell),
                      str(image), str(PAYLOAD)])
    if made.returncode != 0:
        return QemuMade(refusal=made.stderr.strip().splitlines()[-1])
    plain = os.urandom(PAYLOAD)
    raw.write_bytes(plain)
    wrote = _qemu_img(["convert", "-n", *qemu_secret_args(secret), "-f", "raw", str(raw),
                       "--target-image-opts", _image_opts(image, fmt)])
    if wrote.returncode != 0:
        return QemuMade(refusal=wrote.stderr.strip().splitlines()[-1])
    read = _qemu_img(["convert", *qemu_secret_args(secret), "--image-opts",
                      _image_opts(image, fmt), "-O", "raw", str(back)])
    assert read.returncode == 0, read.stderr
    return QemuMade(image=image, plain=plain, theirs=back.read_bytes())


QEMU_SECONDS: list[float] = []  # wall time of making the selected cells; printed at the end


@pytest.fixture(scope="module")
def qemu_made(request: pytest.FixtureRequest, qemu_img: str,
              tmp_path_factory: pytest.TempPathFactory) -> dict[QemuCell, QemuMade]:
    """Every selected qemu-img cell made up front, two at a time (qemu-img's benchmark is
    single-threaded CPU work)."""
    del qemu_img
    cells = [item.callspec.params["cell"] for item in request.session.items
             if isinstance(item, pytest.Function) and item.originalname == "test_qemu_img_image"]
    secret = secret_file(tmp_path_factory.mktemp("qemu-secret"), "pass", PASSPHRASE)
    works = [tmp_path_factory.mktemp("qemu-cell") for _ in cells]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        made = dict(zip(cells, pool.map(_qemu_make, cells, works, [secret] * len(cells)),
                        strict=True))
    QEMU_SECONDS.append(time.monotonic() - started)
    return made


def _qcow2_plaintext(data: bytes, cipher: SectorCipher, size: int) -> bytes:
    """The guest bytes of a qcow2 (version 2/3, no compression), each cluster decrypted with
    its sectors' IVs counted from the cluster's offset in the file, as qemu does for LUKS
    (qcow2's spec: the IV of encrypted LUKS data is the host sector)."""
    def at(offset: int, length: int = 8) -> int:
        return int.from_bytes(data[offset:offset + length], "big")

    cluster = 1 << at(20, 4)
    l1_size, l1_offset, per_l2 = at(36, 4), at(40), cluster // 8
    mask = ((1 << 56) - 1) & ~0x1FF
    out = bytearray(size)
    for i in range(l1_size):
        l2 = at(l1_offset + 8 * i) & mask
        for j in range(per_l2 if l2 else 0):
            entry, guest = at(l2 + 8 * j), (i * per_l2 + j) * cluster
            assert not entry >> 62 & 1, "compressed cluster"
            host, length = entry & mask, min(cluster, size - guest)
            if host and length > 0:
                out[guest:guest + length] = cipher.decrypt(data[host:host + length],
                                                           host // 512)
    return bytes(out)


@pytest.mark.parametrize("cell", QEMU_CASES, ids=["-".join(c).replace(":", "-")
                                                  for c in QEMU_CASES])
def test_qemu_img_image(qemu_made: dict[QemuCell, QemuMade], cell: QemuCell) -> None:
    """qemu-img made the image and wrote known plaintext through its own encryption; its own
    decryption (``convert`` to raw) and imgcrypt's must give the same bytes, or imgcrypt must
    refuse what OpenSSL lacks, naming the cipher and the way out."""
    fmt, alg, _, _, hash_name = cell
    tool, made = f"qemu-img {fmt}", qemu_made[cell]
    if made.refusal:
        assert any(r in made.refusal for r in QEMU_REFUSALS), made.refusal
        COUNTS[tool]["refused by the tool"] += 1
        REFUSED.append(f"{tool} {' '.join(cell[1:])}: {made.refusal}")
        return
    assert made.image is not None
    COUNTS[tool]["made"] += 1
    assert made.theirs[:PAYLOAD] == made.plain
    data = made.image.read_bytes()
    if fmt == "qcow2":
        found = read_qcow2_luks(str(made.image))
        header, region, verdict = found.luks, found.region, found.describe()
    else:
        header, region = read_header(io.BytesIO(data))
        verdict = header.describe()
    if hash_name == "md5":
        # cryptsetup's LUKS1 rule wants a digest hash of 20 bytes or more and refuses the
        # header; qemu (and so imgcrypt) derives the 20-byte digest with PBKDF2-HMAC-MD5
        assert "luks1-hash-size" in verdict["cryptsetup_refuses"]
        if fmt == "luks":
            dumped = subprocess.run(["cryptsetup", "luksDump", str(made.image)],
                                    capture_output=True, text=True, timeout=120)
            assert dumped.returncode != 0 and "md5" in dumped.stderr
        COUNTS[tool]["cryptsetup refuses the header (md5), opened by imgcrypt as qemu does"] += 1
    else:
        assert "cryptsetup_refuses" not in verdict
    if not _opens(alg.split("-")[0], hash_name):
        assert not verdict["decryptable"], verdict
        with pytest.raises(UnsupportedError) as err:
            header.unlock(region, PASSPHRASE)
        message = str(err.value)
        assert alg.split("-")[0] in message and "cryptsetup reencrypt" in message
        assert "qemu-img convert" in message and "\n" not in message
        COUNTS[tool]["refused by imgcrypt (cipher not in OpenSSL)"] += 1
        return
    assert verdict["decryptable"], verdict["unsupported"]
    if fmt == "qcow2":
        _, key = header.unlock(region, PASSPHRASE)
        ours = _qcow2_plaintext(data, SectorCipher(header.cipher, key), PAYLOAD)
    else:
        with open(made.image, "rb") as f:
            opened = unlock_stream(f, PASSPHRASE)
            out = io.BytesIO()
            decrypt_payload(opened, f, out, size=PAYLOAD)
        ours = out.getvalue()
    assert ours == made.theirs[:PAYLOAD]
    COUNTS[tool]["opened byte-identical"] += 1


def test_matrix_counts() -> None:
    """Runs last: what the tools made, what imgcrypt opened and what it refused."""
    print(f"qemu-img cells: {len(QEMU_CASES)} of the {QEMU_ALL} its options name, chosen by the "
          "fixed rule above QEMU_CASES (one factor at a time around aes-256-xts-plain64 sha256)")
    for seconds in QEMU_SECONDS:
        print(f"qemu-img made the selected cells in {seconds:.0f} s (two at a time)")
    for tool, counts in sorted(COUNTS.items()):
        print(f"{tool}: {dict(counts)}")
    for line in REFUSED:
        print(f"refused by the tool: {line}")
    for counts in COUNTS.values():
        refused = sum(n for outcome, n in counts.items()
                      if outcome.startswith("refused by imgcrypt"))
        assert counts["made"] == counts["opened byte-identical"] + refused
