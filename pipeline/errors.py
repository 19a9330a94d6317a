"""User-facing errors: the CLI prints these as one clear paragraph, without a traceback."""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem the user can fix (bad params, missing data, a busy cache). The message says how."""


def damaged_output(path: object, stage: str, why: str) -> UserError:
    """The error for a stage's output file that is not what its writer writes: the file, what is
    wrong with it, and the fix (rerun that stage)."""
    return UserError(f"{path}: {why}; this {stage} output is damaged or from an older version: rerun the "
                     f"stage (`python -m pipeline run {stage} --force {stage}`).")


# What each expected errno means for the path it names, and what to do about it.
_OS_ADVICE = {
    errno.ENOENT: ("does not exist", "check the path"),
    errno.EACCES: ("cannot be opened: permission denied", "check its permissions (ls -ld), or "
                                                          "choose a path you may use"),
    errno.EPERM: ("cannot be changed: operation not permitted", "choose a path you may write to"),
    errno.EISDIR: ("is a folder where a file is expected", "pass a file"),
    errno.ENOTDIR: ("is not a folder (it, or a folder on its path, is a file)", "pass a folder"),
    errno.ELOOP: ("is a symbolic link loop (a link that leads back to itself)", "fix or remove the link"),
    errno.ENOSPC: ("cannot be written: the disk is full", "free some space, or choose a --cache-dir "
                                                          "/ --out on another disk"),
    errno.EDQUOT: ("cannot be written: disk quota exceeded", "free some space or choose another disk"),
    errno.EROFS: ("cannot be written: the file system is read-only", "choose a writable place"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ENAMETOOLONG: ("has a name too long for the file system", "choose a shorter path"),
    errno.ENOTEMPTY: ("is a folder that is not empty", "remove it or choose another path"),
}


def is_expected_os_error(e: BaseException) -> bool:
    """True for the file system failures a user's input can cause (paths, permissions, space)."""
    return isinstance(e, OSError) and e.errno in _OS_ADVICE


def describe_os_error(e: OSError, what: str = "") -> str:
    """One sentence for a file system failure: the file, what is wrong with it, the fix.

    Args:
      e: the error (its ``filename`` names the path when the OS gave one).
      what: what the path is to the user (``"the params file"``), placed before it.
    """
    path = e.filename if e.filename is not None else ""
    name = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    said, fix = _OS_ADVICE.get(e.errno, (f"cannot be used: {e.strerror or type(e).__name__}",
                                          "check the path"))
    subject = " ".join(x for x in (what, repr(name) if name else "") if x) or "a file"
    return f"{subject} {said}; {fix}."


def terminal_safe(text: str) -> str:
    """`text` on one line, safe to print: control characters (newlines, terminal escape codes)
    and undecodable bytes of a file name (lone surrogates) shown as Python escapes (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
