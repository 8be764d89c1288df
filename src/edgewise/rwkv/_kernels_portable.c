/* The portable build of the RWKV decode kernels: setup.py compiles this file with its flags. */
#include "_decode.c"
