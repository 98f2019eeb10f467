"""Password hashing for the dashboard's sign-in (pure functions; run them in a thread).

Passwords are hashed with scrypt (memory-hard: n=2**15, r=8 takes 32 MiB and ~50-100 ms per
try), a random 16-byte salt per account, stored as ``scrypt$n$r$p$salt$hash`` so the
parameters can grow without invalidating old hashes.
"""

from __future__ import annotations

import hashlib
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SCRYPT_MAXMEM_BYTES = 64 << 20
PASSWORD_CHARS_MAX = 1024
DUMMY_HASH = "scrypt$32768$8$1$" + "00" * 16 + "$" + "00" * 32  # unknown names cost the same


def hash_password(password: str, salt: bytes | None = None, n: int = SCRYPT_N,
                  r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Slow on purpose (run it in a thread); the result embeds its salt and parameters."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                            maxmem=SCRYPT_MAXMEM_BYTES, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Does ``password`` match a ``hash_password`` result? Constant-time compare."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        again = hash_password(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return secrets.compare_digest(again.rsplit("$", 1)[1], digest)
