"""Random ids (request ids, run ids) as `secrets.token_hex(16)` makes them, for less.

`token_hex(16)` reads 16 bytes from the OS's CSPRNG with one `getrandom` system call per
id, and the mesh makes two ids per completion (the request's and the run's). `new_id`
reads the same CSPRNG 4 KiB at a time and hands out 16 bytes of it per id, as 32 hex
digits: the same randomness, one system call per 256 ids. A block is never handed out
twice: a lock guards it across threads, and a child process made by `fork` starts on a
block of its own.
"""

from __future__ import annotations

import os
import threading

__all__ = ["new_id"]

_BLOCK = 4096
_ID_BYTES = 16

_lock = threading.Lock()
_block = b""
_at = 0


def new_id() -> str:
    """128 random bits from the OS's CSPRNG, as 32 lowercase hex digits."""
    global _block, _at
    with _lock:
        at = _at
        if at + _ID_BYTES > len(_block):
            _block = os.urandom(_BLOCK)
            at = 0
        _at = at + _ID_BYTES
        block = _block
    return block[at:at + _ID_BYTES].hex()


def _forget_block() -> None:
    """After `fork`: the child must not hand out ids its parent also hands out."""
    global _block, _at, _lock
    _lock = threading.Lock()
    _block = b""
    _at = 0


os.register_at_fork(after_in_child=_forget_block)
