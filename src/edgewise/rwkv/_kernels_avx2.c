/* The avx2 build of the RWKV decode kernels, compiled by setup.py with that variant's flags.
 * A Python extension module only so that setuptools builds, names and installs it: Python calls
 * the kernels through ctypes (native.py). */
#include <Python.h>   /* first, as Python asks */
#include "_decode.c"

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels_avx2", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__kernels_avx2(void) { return PyModule_Create(&module); }
