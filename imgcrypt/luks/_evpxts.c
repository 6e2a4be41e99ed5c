/*
 * AES-XTS over whole sectors with OpenSSL's own EVP implementation (AES-NI/VAES where the CPU
 * has them), for imgcrypt.luks.sectors; and AES-CBC decryption of sectors the same way (plain,
 * plain64 or ESSIV IVs), the one CBC direction that needs no chaining across blocks.
 *
 * One EVP context per call, keyed once; for every sector the IV (the plain64/plain sector
 * number, little-endian, in 512-byte units) is set again with EVP_CipherInit_ex(..., iv, -1)
 * and the sector is one EVP_CipherUpdate. The loop runs without the GIL, in place when source
 * and target are the same buffer. The ECB-based paths in sectors.py give identical bytes when
 * this module is not built (no compiler, or no libcrypto headers).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <openssl/evp.h>

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

/* 0 on success, -1 when OpenSSL refused (e.g. equal key halves when encrypting). */
static int xts_run(const EVP_CIPHER *cipher, const unsigned char *key,
                   const unsigned char *src, unsigned char *dst, Py_ssize_t sectors,
                   int sector_size, uint64_t iv_start, int wrap32, int encrypt)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return -1;
    int ok = EVP_CipherInit_ex(ctx, cipher, NULL, key, NULL, encrypt);
    uint64_t step = (uint64_t)(sector_size / 512);
    uint64_t number = iv_start;
    unsigned char iv[16] = {0};
    for (Py_ssize_t i = 0; ok && i < sectors; i++, number += step) {
        int outl = 0;
        put_le64(iv, wrap32 ? (number & UINT64_C(0xFFFFFFFF)) : number);
        size_t at = (size_t)i * (size_t)sector_size;
        ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1)
             && EVP_CipherUpdate(ctx, dst + at, &outl, src + at, sector_size)
             && outl == sector_size;
    }
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

static int overlap_differs(const Py_buffer *a, const Py_buffer *b)
{
    const char *pa = (const char *)a->buf, *pb = (const char *)b->buf;
    return pa != pb && pa < pb + b->len && pb < pa + a->len;
}

/* xts(key, src, dst, sector_size, iv_start, wrap32, encrypt) */
static PyObject *xts(PyObject *self, PyObject *args)
{
    Py_buffer key, src, dst;
    int sector_size, wrap32, encrypt;
    unsigned long long iv_start;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*iKpp", &key, &src, &dst, &sector_size, &iv_start,
                          &wrap32, &encrypt))
        return NULL;
    PyObject *result = NULL;
    const EVP_CIPHER *cipher = key.len == 32 ? EVP_aes_128_xts()
                               : key.len == 64 ? EVP_aes_256_xts() : NULL;
    if (cipher == NULL) {
        PyErr_SetString(PyExc_ValueError, "XTS keys are 32 or 64 bytes");
        goto done;
    }
    if (sector_size < 512 || sector_size > 4096 || sector_size % 512 != 0) {
        PyErr_SetString(PyExc_ValueError, "sector size must be 512..4096, a multiple of 512");
        goto done;
    }
    if (src.len != dst.len || src.len % sector_size != 0) {
        PyErr_SetString(PyExc_ValueError, "buffers must be the same whole number of sectors");
        goto done;
    }
    if (overlap_differs(&src, &dst)) {
        PyErr_SetString(PyExc_ValueError, "source and target overlap without being the same");
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = xts_run(cipher, (const unsigned char *)key.buf, (const unsigned char *)src.buf,
                 (unsigned char *)dst.buf, src.len / sector_size, sector_size,
                 (uint64_t)iv_start, wrap32, encrypt);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the XTS operation");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* 0 on success, -1 on an OpenSSL failure. essiv_key NULL: the IV is the sector number itself. */
static int cbc_decrypt_run(const EVP_CIPHER *cipher, const unsigned char *key,
                           const unsigned char *essiv_key, const unsigned char *src,
                           unsigned char *dst, Py_ssize_t sectors, int sector_size,
                           uint64_t iv_start, int wrap32)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX *essiv = essiv_key != NULL ? EVP_CIPHER_CTX_new() : NULL;
    int ok = ctx != NULL && (essiv_key == NULL || essiv != NULL)
             && EVP_DecryptInit_ex(ctx, cipher, NULL, key, NULL)
             && EVP_CIPHER_CTX_set_padding(ctx, 0);
    if (ok && essiv != NULL)
        ok = EVP_EncryptInit_ex(essiv, EVP_aes_256_ecb(), NULL, essiv_key, NULL)
             && EVP_CIPHER_CTX_set_padding(essiv, 0);
    uint64_t step = (uint64_t)(sector_size / 512);
    uint64_t number = iv_start;
    unsigned char iv[16];
    for (Py_ssize_t i = 0; ok && i < sectors; i++, number += step) {
        int outl = 0;
        memset(iv, 0, sizeof iv);
        put_le64(iv, wrap32 ? (number & UINT64_C(0xFFFFFFFF)) : number);
        if (essiv != NULL)
            ok = EVP_EncryptUpdate(essiv, iv, &outl, iv, 16) && outl == 16;
        size_t at = (size_t)i * (size_t)sector_size;
        ok = ok && EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, iv)
             && EVP_DecryptUpdate(ctx, dst + at, &outl, src + at, sector_size)
             && outl == sector_size;
    }
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_CTX_free(essiv);
    return ok ? 0 : -1;
}

/* cbc_decrypt(key, essiv_key, src, dst, sector_size, iv_start, wrap32); essiv_key b"" = none */
static PyObject *cbc_decrypt(PyObject *self, PyObject *args)
{
    Py_buffer key, essiv_key, src, dst;
    int sector_size, wrap32;
    unsigned long long iv_start;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*w*iKp", &key, &essiv_key, &src, &dst, &sector_size,
                          &iv_start, &wrap32))
        return NULL;
    PyObject *result = NULL;
    const EVP_CIPHER *cipher = key.len == 16 ? EVP_aes_128_cbc()
                               : key.len == 24 ? EVP_aes_192_cbc()
                               : key.len == 32 ? EVP_aes_256_cbc() : NULL;
    if (cipher == NULL || (essiv_key.len != 0 && essiv_key.len != 32)) {
        PyErr_SetString(PyExc_ValueError, "CBC keys are 16, 24 or 32 bytes, ESSIV keys 32");
        goto done;
    }
    if (sector_size < 512 || sector_size > 4096 || sector_size % 512 != 0) {
        PyErr_SetString(PyExc_ValueError, "sector size must be 512..4096, a multiple of 512");
        goto done;
    }
    if (src.len != dst.len || src.len % sector_size != 0) {
        PyErr_SetString(PyExc_ValueError, "buffers must be the same whole number of sectors");
        goto done;
    }
    if (overlap_differs(&src, &dst)) {
        PyErr_SetString(PyExc_ValueError, "source and target overlap without being the same");
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cbc_decrypt_run(cipher, (const unsigned char *)key.buf,
                         essiv_key.len ? (const unsigned char *)essiv_key.buf : NULL,
                         (const unsigned char *)src.buf, (unsigned char *)dst.buf,
                         src.len / sector_size, sector_size, (uint64_t)iv_start, wrap32);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the CBC operation");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&essiv_key);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"cbc_decrypt", cbc_decrypt, METH_VARARGS,
     "cbc_decrypt(key, essiv_key, src, dst, sector_size, iv_start, wrap32): AES-CBC sectors"},
    {"xts", xts, METH_VARARGS,
     "xts(key, src, dst, sector_size, iv_start, wrap32, encrypt): AES-XTS sector by sector"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_evpxts", "OpenSSL EVP AES-XTS and AES-CBC decryption over sectors for imgcrypt.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__evpxts(void)
{
    return PyModule_Create(&module);
}
