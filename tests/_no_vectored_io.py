"""A pytest plugin (``-p _no_vectored_io``) that removes the POSIX-only I/O functions ckptcore may use.

``CKPTCORE_TEST_PLATFORM=macos`` removes ``os.preadv`` and ``os.fdatasync`` (older macOS);
``windows`` also removes ``os.pread`` and ``os.writev``. Used by test_trust_storage.py to run the
storage tests as those platforms would.
"""

import os

_REMOVE = {"macos": ("preadv", "fdatasync"), "windows": ("preadv", "fdatasync", "pread", "writev")}
for _name in _REMOVE[os.environ.get("CKPTCORE_TEST_PLATFORM", "windows")]:
    if hasattr(os, _name):
        delattr(os, _name)
