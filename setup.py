"""The one compiled part of ckptcore: ``ckptcore.restore._plan_fast`` (everything else is in pyproject.toml).

It is optional: without a C compiler the build goes on without it, and ckptcore plans every
restore in Python (the same results, slower on models of many small arrays).
"""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("ckptcore.restore._plan_fast", ["ckptcore/restore/_plan_fast.pyx"],
               include_dirs=[numpy.get_include()],
               define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")], optional=True)],
    compiler_directives={"language_level": "3"}, quiet=True))
