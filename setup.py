"""The compiled parts of ckptcore (everything else is in pyproject.toml).

``ckptcore.restore._plan_fast`` (restore planning and matching) and ``ckptcore.save._save_fast``
(steps of the save walk). Both are optional: without a C compiler the build goes on without
them, and ckptcore does the same work in Python (the same results, slower on models of many
small arrays).
"""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def _ext(name: str, source: str) -> Extension:
    return Extension(name, [source], include_dirs=[numpy.get_include()],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")], optional=True)


setup(ext_modules=cythonize(
    [_ext("ckptcore.restore._plan_fast", "ckptcore/restore/_plan_fast.pyx"),
     _ext("ckptcore.save._save_fast", "ckptcore/save/_save_fast.pyx")],
    compiler_directives={"language_level": "3"}, quiet=True))
