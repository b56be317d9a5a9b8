/* FastCDC (2016, normalized chunking) over a caller-given gear table.
 *
 * The cut rule is exactly that of the `fastcdc` package 1.7 (fastcdc_cy.pyx): a 32-bit rolling
 * hash `h = (h >> 1) + gear[byte]`, no cut before `min`, mask_s = 2^(bits+1)-1 until the centre
 * size, mask_l = 2^(bits-1)-1 after it, a forced cut at `max`, where bits = round(log2(avg)). The
 * table is a parameter: with STANDARD_GEAR it reproduces `fastcdc`'s cuts; an encrypted
 * repository passes a table derived from its key (SPEC.md section 8).
 *
 * cuts(data, table, min_size, avg_size, max_size) -> list[int]: the chunk lengths of `data`
 * taken alone (the last chunk ends at the end of `data`). `table` is 1024 bytes: 256 uint32
 * little-endian. The scan runs with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const uint32_t STANDARD_GEAR[256] = {
    1553318008u, 574654857u, 759734804u, 310648967u, 1393527547u, 1195718329u,
    694400241u, 1154184075u, 1319583805u, 1298164590u, 122602963u, 989043992u,
    1918895050u, 933636724u, 1369634190u, 1963341198u, 1565176104u, 1296753019u,
    1105746212u, 1191982839u, 1195494369u, 29065008u, 1635524067u, 722221599u,
    1355059059u, 564669751u, 1620421856u, 1100048288u, 1018120624u, 1087284781u,
    1723604070u, 1415454125u, 737834957u, 1854265892u, 1605418437u, 1697446953u,
    973791659u, 674750707u, 1669838606u, 320299026u, 1130545851u, 1725494449u,
    939321396u, 748475270u, 554975894u, 1651665064u, 1695413559u, 671470969u,
    992078781u, 1935142196u, 1062778243u, 1901125066u, 1935811166u, 1644847216u,
    744420649u, 2068980838u, 1988851904u, 1263854878u, 1979320293u, 111370182u,
    817303588u, 478553825u, 694867320u, 685227566u, 345022554u, 2095989693u,
    1770739427u, 165413158u, 1322704750u, 46251975u, 710520147u, 700507188u,
    2104251000u, 1350123687u, 1593227923u, 1756802846u, 1179873910u, 1629210470u,
    358373501u, 807118919u, 751426983u, 172199468u, 174707988u, 1951167187u,
    1328704411u, 2129871494u, 1242495143u, 1793093310u, 1721521010u, 306195915u,
    1609230749u, 1992815783u, 1790818204u, 234528824u, 551692332u, 1930351755u,
    110996527u, 378457918u, 638641695u, 743517326u, 368806918u, 1583529078u,
    1767199029u, 182158924u, 1114175764u, 882553770u, 552467890u, 1366456705u,
    934589400u, 1574008098u, 1798094820u, 1548210079u, 821697741u, 601807702u,
    332526858u, 1693310695u, 136360183u, 1189114632u, 506273277u, 397438002u,
    620771032u, 676183860u, 1747529440u, 909035644u, 142389739u, 1991534368u,
    272707803u, 1905681287u, 1210958911u, 596176677u, 1380009185u, 1153270606u,
    1150188963u, 1067903737u, 1020928348u, 978324723u, 962376754u, 1368724127u,
    1133797255u, 1367747748u, 1458212849u, 537933020u, 1295159285u, 2104731913u,
    1647629177u, 1691336604u, 922114202u, 170715530u, 1608833393u, 62657989u,
    1140989235u, 381784875u, 928003604u, 449509021u, 1057208185u, 1239816707u,
    525522922u, 476962140u, 102897870u, 132620570u, 419788154u, 2095057491u,
    1240747817u, 1271689397u, 973007445u, 1380110056u, 1021668229u, 12064370u,
    1186917580u, 1017163094u, 597085928u, 2018803520u, 1795688603u, 1722115921u,
    2015264326u, 506263638u, 1002517905u, 1229603330u, 1376031959u, 763839898u,
    1970623926u, 1109937345u, 524780807u, 1976131071u, 905940439u, 1313298413u,
    772929676u, 1578848328u, 1108240025u, 577439381u, 1293318580u, 1512203375u,
    371003697u, 308046041u, 320070446u, 1252546340u, 568098497u, 1341794814u,
    1922466690u, 480833267u, 1060838440u, 969079660u, 1836468543u, 2049091118u,
    2023431210u, 383830867u, 2112679659u, 231203270u, 1551220541u, 1377927987u,
    275637462u, 2110145570u, 1700335604u, 738389040u, 1688841319u, 1506456297u,
    1243730675u, 258043479u, 599084776u, 41093802u, 792486733u, 1897397356u,
    28077829u, 1520357900u, 361516586u, 1119263216u, 209458355u, 45979201u,
    363681532u, 477245280u, 2107748241u, 601938891u, 244572459u, 1689418013u,
    1141711990u, 1485744349u, 1181066840u, 1950794776u, 410494836u, 1445347454u,
    2137242950u, 852679640u, 1014566730u, 1999335993u, 1871390758u, 1736439305u,
    231222289u, 603972436u, 783045542u, 370384393u, 184356284u, 709706295u,
    1453549767u, 591603172u, 768512391u, 854125182u,
};

static size_t cdc_offset(const uint8_t *data, size_t size, const uint32_t *gear, size_t mi,
                         size_t ma, size_t cs, uint32_t mask_s, uint32_t mask_l) {
    uint32_t pattern = 0;
    size_t i = mi < size ? mi : size;
    size_t barrier = cs < size ? cs : size;
    while (i < barrier) {
        pattern = (pattern >> 1) + gear[data[i]];
        if (!(pattern & mask_s))
            return i + 1;
        i++;
    }
    barrier = ma < size ? ma : size;
    while (i < barrier) {
        pattern = (pattern >> 1) + gear[data[i]];
        if (!(pattern & mask_l))
            return i + 1;
        i++;
    }
    return i;
}

static size_t center_size(size_t average, size_t minimum, size_t source_size) {
    size_t offset = minimum + (minimum + 1) / 2;
    if (offset > average)
        offset = average;
    size_t size = average - offset;
    return size > source_size ? source_size : size;
}

#define CDC_RELEASE_GIL ((size_t)4 << 20)

static PyObject *cdc_cuts(PyObject *self, PyObject *args) {
    Py_buffer data, table;
    Py_ssize_t min_size, avg_size, max_size;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*nnn:cuts", &data, &table, &min_size, &avg_size, &max_size))
        return NULL;
    PyObject *result = NULL;
    size_t *lengths = NULL;
    if (table.len != 1024) {
        PyErr_SetString(PyExc_ValueError, "gear table must be 1024 bytes (256 uint32 LE)");
        goto done;
    }
    if (min_size < 64 || avg_size < 256 || max_size < 1024 || min_size > avg_size ||
        avg_size > max_size || max_size > (Py_ssize_t)1 << 30) {
        PyErr_SetString(PyExc_ValueError, "invalid chunk sizes");
        goto done;
    }
    uint32_t gear[256];
    const uint8_t *t = (const uint8_t *)table.buf;
    for (int k = 0; k < 256; k++)
        gear[k] = (uint32_t)t[4 * k] | (uint32_t)t[4 * k + 1] << 8 |
                  (uint32_t)t[4 * k + 2] << 16 | (uint32_t)t[4 * k + 3] << 24;
    size_t total = (size_t)data.len;
    size_t capacity = total / (size_t)min_size + 2; /* every chunk but the last is >= min */
    lengths = malloc(capacity * sizeof(size_t));
    if (lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    long bits = lround(log2((double)avg_size));
    uint32_t mask_s = (uint32_t)((1ull << (bits + 1)) - 1);
    uint32_t mask_l = (uint32_t)((1ull << (bits - 1)) - 1);
    size_t cs = center_size((size_t)avg_size, (size_t)min_size, (size_t)max_size);
    size_t n = 0;
    const uint8_t *buf = (const uint8_t *)data.buf;
    /* Below CDC_RELEASE_GIL bytes (well under a millisecond of work) the lock is kept: handing it
       over and waiting to get it back from a busy thread costs the caller several times more. */
    PyThreadState *released = total >= CDC_RELEASE_GIL ? PyEval_SaveThread() : NULL;
    size_t offset = 0;
    while (offset < total) {
        size_t cp = cdc_offset(buf + offset, total - offset, gear, (size_t)min_size,
                               (size_t)max_size, cs, mask_s, mask_l);
        lengths[n++] = cp;
        offset += cp;
    }
    if (released != NULL)
        PyEval_RestoreThread(released);
    result = PyList_New((Py_ssize_t)n);
    if (result == NULL)
        goto done;
    for (size_t k = 0; k < n; k++) {
        PyObject *v = PyLong_FromSize_t(lengths[k]);
        if (v == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)k, v);
    }
done:
    free(lengths);
    PyBuffer_Release(&data);
    PyBuffer_Release(&table);
    return result;
}

static PyObject *cdc_standard_table(PyObject *self, PyObject *unused) {
    uint8_t out[1024];
    (void)self;
    (void)unused;
    for (int k = 0; k < 256; k++) {
        out[4 * k] = (uint8_t)STANDARD_GEAR[k];
        out[4 * k + 1] = (uint8_t)(STANDARD_GEAR[k] >> 8);
        out[4 * k + 2] = (uint8_t)(STANDARD_GEAR[k] >> 16);
        out[4 * k + 3] = (uint8_t)(STANDARD_GEAR[k] >> 24);
    }
    return PyBytes_FromStringAndSize((const char *)out, sizeof out);
}

static PyMethodDef cdc_methods[] = {
    {"cuts", cdc_cuts, METH_VARARGS,
     "cuts(data, table, min_size, avg_size, max_size) -> list[int]: FastCDC chunk lengths."},
    {"standard_table", cdc_standard_table, METH_NOARGS,
     "standard_table() -> bytes: the fastcdc package's GEAR table, 256 uint32 LE."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cdc_module = {
    PyModuleDef_HEAD_INIT, "_cdc", "FastCDC over a caller-given gear table.", -1, cdc_methods,
};

PyMODINIT_FUNC PyInit__cdc(void) { return PyModule_Create(&cdc_module); }
