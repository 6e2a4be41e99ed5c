"""The crypto layer: the crypto table, sector ciphers and kernels, the cipher matrix."""
