DIRECT: int

def xts(
    key: bytes,
    src: bytes | bytearray | memoryview,
    dst: bytearray | memoryview,
    sector_size: int,
    iv_start: int,
    wrap32: bool,
    encrypt: bool,
    through_evp: bool = False,
    /,
) -> None: ...

def cbc_decrypt(
    key: bytes,
    essiv_key: bytes,
    src: bytes | bytearray | memoryview,
    dst: bytearray | memoryview,
    sector_size: int,
    iv_start: int,
    wrap32: bool,
    /,
) -> None: ...

def load_legacy_provider() -> bool: ...
