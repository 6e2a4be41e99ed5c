"""dm-crypt's sector encryption written out per sector, as an oracle independent of imgcrypt.

IVs by dm-crypt's rules (drivers/md/dm-crypt.c, ``crypt_iv_*_gen``, BRIEF section 10), one
`cryptography` Cipher object per sector in its own modes (XTS, CBC, ECB; CTR from ECB where
`cryptography` has none), with Python integers: nothing shared with imgcrypt's vectorised
kernels. tests/crypto/test_cipher_matrix.py checks it against qemu-img's own encryption.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# What OpenSSL computes (the oracle's own list, not imgcrypt's table).
OPENSSL_CIPHERS = {"aes": algorithms.AES, "camellia": decrepit.Camellia,
                   "cast5": decrepit.CAST5, "sm4": algorithms.SM4}


def _oracle_iv(ivgen: str, sector: int, block: int, key: bytes, algorithm: type) -> bytes:
    sector &= (1 << 64) - 1
    name, _, essiv_hash = ivgen.partition(":")
    if name == "plain":
        return (sector & 0xFFFFFFFF).to_bytes(4, "little").ljust(block, b"\0")
    if name == "plain64":
        return sector.to_bytes(8, "little").ljust(block, b"\0")
    if name == "plain64be":
        return sector.to_bytes(8, "big").rjust(block, b"\0")
    if name == "benbi":
        shift = 9 - (block.bit_length() - 1)
        return (((sector << shift) + 1) & ((1 << 64) - 1)).to_bytes(8, "big").rjust(block, b"\0")
    if name == "essiv":
        salt = hashlib.new(essiv_hash.replace("sha3-", "sha3_").replace("blake2s-256", "blake2s"),
                           key).digest()
        plain = sector.to_bytes(8, "little").ljust(block, b"\0")
        return Cipher(algorithm(salt), modes.ECB()).encryptor().update(plain)
    assert name in ("null", ""), ivgen
    return bytes(block)


def ctr_by_blocks(algorithm: type, key: bytes, iv: bytes, data: bytes) -> bytes:
    """CTR from ECB one block at a time, for ciphers `cryptography` has no CTR mode for."""
    block = len(iv)
    ecb = Cipher(algorithm(key), modes.ECB()).encryptor()
    start = int.from_bytes(iv, "big")
    out = bytearray()
    for j in range(len(data) // block):
        counter = ((start + j) % (1 << (8 * block))).to_bytes(block, "big")
        stream = ecb.update(counter)
        out += bytes(a ^ b for a, b in zip(data[j * block:(j + 1) * block], stream, strict=True))
    return bytes(out)


def xts_by_blocks(algorithm: type, key: bytes, iv: bytes, data: bytes) -> bytes:
    """XTS (IEEE 1619) from ECB one block at a time, for 16-byte ciphers other than AES."""
    half = len(key) // 2
    ecb = Cipher(algorithm(key[:half]), modes.ECB()).encryptor()
    tweak = int.from_bytes(
        Cipher(algorithm(key[half:]), modes.ECB()).encryptor().update(iv), "little")
    out = bytearray()
    for j in range(len(data) // 16):
        mask = tweak.to_bytes(16, "little")
        block = bytes(a ^ b for a, b in zip(data[16 * j:16 * (j + 1)], mask, strict=True))
        out += bytes(a ^ b for a, b in zip(ecb.update(block), mask, strict=True))
        tweak = ((tweak << 1) ^ (0x87 if tweak >> 127 else 0)) & ((1 << 128) - 1)
    return bytes(out)


def oracle_encrypt(spec: str, key: bytes, plain: bytes, sector_size: int,
                   iv_start: int = 0) -> bytes:
    name, chaining, ivgen = [*spec.split("-", 2), ""][:3]
    algorithm = OPENSSL_CIPHERS[name]
    block = algorithm.block_size // 8
    out = bytearray()
    for k in range(len(plain) // sector_size):
        data = plain[k * sector_size:(k + 1) * sector_size]
        iv = _oracle_iv(ivgen, iv_start + k * (sector_size // 512), block, key, algorithm)
        if chaining == "xts" and name == "aes":
            out += Cipher(algorithms.AES(key), modes.XTS(iv)).encryptor().update(data)
        elif chaining == "xts":
            out += xts_by_blocks(algorithm, key, iv, data)
        elif chaining == "cbc":
            out += Cipher(algorithm(key), modes.CBC(iv)).encryptor().update(data)
        elif chaining == "ecb":
            out += Cipher(algorithm(key), modes.ECB()).encryptor().update(data)
        else:
            out += ctr_by_blocks(algorithm, key, iv, data)
    return bytes(out)
