/*
 * Optional accelerator for the XTS tweak arithmetic of imgcrypt.crypto.sectors.
 *
 * AES itself stays in `cryptography` (two AES-ECB calls a batch); this only does what numpy
 * needs about fourteen passes for: walking each sector's tweak T, T*x, T*x^2, ... through
 * GF(2^128) with the XTS polynomial and XORing it into the data, in one pass, without the GIL.
 * The pure-numpy path in sectors.py gives identical bytes when this module is not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t load_le64(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
#endif
}

static inline void store_le64(unsigned char *p, uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, 8);
#else
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
#endif
}

/* dst[k] = src[k] ^ T_i * x^j for block j of sector i; src and dst may be the same memory. */
static void xor_tweaks_run(const unsigned char *src, unsigned char *dst,
                           const unsigned char *first, Py_ssize_t sectors, Py_ssize_t blocks)
{
    for (Py_ssize_t i = 0; i < sectors; i++) {
        uint64_t lo = load_le64(first + 16 * i);
        uint64_t hi = load_le64(first + 16 * i + 8);
        const unsigned char *s = src + (size_t)i * (size_t)blocks * 16;
        unsigned char *d = dst + (size_t)i * (size_t)blocks * 16;
        for (Py_ssize_t j = 0; j < blocks; j++, s += 16, d += 16) {
            store_le64(d, load_le64(s) ^ lo);
            store_le64(d + 8, load_le64(s + 8) ^ hi);
            uint64_t carry = hi >> 63;
            hi = (hi << 1) | (lo >> 63);
            lo = (lo << 1) ^ (UINT64_C(0x87) & (UINT64_C(0) - carry));
        }
    }
}

static PyObject *xor_tweaks(PyObject *self, PyObject *args)
{
    Py_buffer src, dst, first;
    Py_ssize_t blocks;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*y*n", &src, &dst, &first, &blocks))
        return NULL;
    PyObject *result = NULL;
    if (blocks <= 0 || first.len % 16 != 0) {
        PyErr_SetString(PyExc_ValueError, "blocks must be positive and tweaks whole blocks");
        goto done;
    }
    Py_ssize_t sectors = first.len / 16;
    if (sectors > PY_SSIZE_T_MAX / 16 / blocks || src.len != sectors * blocks * 16
            || dst.len != src.len) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match sectors * blocks * 16");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    xor_tweaks_run((const unsigned char *)src.buf, (unsigned char *)dst.buf,
                   (const unsigned char *)first.buf, sectors, blocks);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&first);
    return result;
}

/* The 16-byte IV block of each of `count` sectors: the 64-bit little-endian sector number
 * start + k * step (mod 2^64; mod 2^32 for the "plain" IV), then eight zero bytes. */
static PyObject *iv_blocks(PyObject *self, PyObject *args)
{
    unsigned long long start, step;
    Py_ssize_t count;
    int wrap32;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKnp", &start, &step, &count, &wrap32))
        return NULL;
    if (count < 0 || count > PY_SSIZE_T_MAX / 16) {
        PyErr_SetString(PyExc_ValueError, "count out of range");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * 16);
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    uint64_t number = (uint64_t)start;
    for (Py_ssize_t k = 0; k < count; k++, p += 16, number += (uint64_t)step) {
        store_le64(p, wrap32 ? (number & UINT64_C(0xFFFFFFFF)) : number);
        store_le64(p + 8, 0);
    }
    return out;
}

static int all_zero(const unsigned char *p, Py_ssize_t n)
{
    /* zero iff the first byte is zero and every byte equals the one before it */
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, (size_t)n - 1) == 0);
}

/* The (start, end) byte ranges of `buf` holding a non-zero byte, at `block` granularity,
 * adjacent blocks merged; the last block may be short. Lets writers leave holes. */
static PyObject *nonzero_spans(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t block;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &block))
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t *marks = NULL, count = 0;
    if (block <= 0) {
        PyErr_SetString(PyExc_ValueError, "block must be positive");
        goto done;
    }
    Py_ssize_t blocks = buf.len / block + (buf.len % block != 0);
    marks = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(2 * blocks + 2));
    if (marks == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *p = (const unsigned char *)buf.buf;
    for (Py_ssize_t at = 0; at < buf.len; at += block) {
        Py_ssize_t n = buf.len - at < block ? buf.len - at : block;
        if (all_zero(p + at, n))
            continue;
        if (count > 0 && marks[2 * count - 1] == at)
            marks[2 * count - 1] = at + n;
        else {
            marks[2 * count] = at;
            marks[2 * count + 1] = at + n;
            count++;
        }
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(count);
    for (Py_ssize_t k = 0; out != NULL && k < count; k++) {
        PyObject *span = Py_BuildValue("(nn)", marks[2 * k], marks[2 * k + 1]);
        if (span == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, span);
    }
done:
    PyMem_RawFree(marks);
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"nonzero_spans", nonzero_spans, METH_VARARGS,
     "nonzero_spans(buf, block) -> [(start, end)]: ranges with a non-zero byte"},
    {"iv_blocks", iv_blocks, METH_VARARGS,
     "iv_blocks(start, step, count, wrap32) -> bytes: the plain64/plain IV of each sector"},
    {"xor_tweaks", xor_tweaks, METH_VARARGS,
     "xor_tweaks(src, dst, first_tweaks, blocks_per_sector): dst = src ^ XTS tweak sequence"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_xtsmul", "XTS tweak arithmetic for imgcrypt.crypto.sectors.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__xtsmul(void)
{
    return PyModule_Create(&module);
}
