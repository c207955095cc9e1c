/* The .ods pre-check's tag reader, compiled: the same tags, the same rules and the same state as
 * the tag-by-tag reading of _OdsContentScanner.scan in precheck.py, one pass over the bytes.
 *
 * scan(data, start, end, state, limits) reads the table, row and cell tags that begin in
 * data[start:end] (a tag may run on past end) and returns (event, at, a, b, state):
 *
 *   DONE          every tag before end is read; at is the end of the last one (or start)
 *   TABLE_OPEN    a table start tag ending at at, its attributes data[a:b]
 *   TABLE_CLOSE   a table end tag ending at at
 *   INSIDE_CELL   a table, row or cell tag inside a cell
 *   WIDE_CELL     a value's cell past the column limit
 *   SHEET         a row holding values took the sheet past a limit
 *   UNENDED       a tag starting at at whose attributes run to the end of the data (a quote
 *                 left open, or the tag goes on in the next piece): nothing past it is read
 *
 * Python handles every event but DONE (names the sheet, ends the table, raises the refusal),
 * then calls again from at with the state it holds. The state is (in_cell, in_row, row,
 * row_repeat, column, width, rows, columns, cells_before) and limits (max_columns,
 * max_row_number, max_cells), as the scanner's attributes of those names. Counts stop growing
 * at 2**62, far past any limit the caller passes (it passes limits below 2**60 only), so every
 * comparison with a limit comes out as it does with Python's integers.
 *
 * A tag is what the pattern _ODS_TAG matches: "<", an optional "/", "table:", one of the four
 * names followed by white space, "/" or ">", then attributes up to the first ">" outside quotes.
 * Where a "<" begins no such name, the reading goes on at the next "<".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef long long i64;

#define CAP ((i64)1 << 62)

enum { DONE, TABLE_OPEN, TABLE_CLOSE, INSIDE_CELL, WIDE_CELL, SHEET, UNENDED };
enum { TABLE, ROW, CELL };

typedef struct {
    i64 in_cell, in_row, row, row_repeat, column, width, rows, columns, cells_before;
} State;

typedef struct {
    i64 max_columns, row_limit, max_cells;
} Limits;

static i64 add(i64 a, i64 b) { return a > CAP - b ? CAP : a + b; }

static int grid_refused(const Limits *l, i64 rows, i64 columns) {
    if (columns > l->max_columns || rows > l->row_limit) return 1;
    return (__int128)rows * columns > l->max_cells;
}

static int sheet_refused(const Limits *l, const State *s) {
    if (grid_refused(l, s->rows, s->columns)) return 1;
    return s->cells_before != 0
        && (__int128)s->cells_before + (__int128)s->rows * s->columns > l->max_cells;
}

static int space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* The first `what` in at[0:size], or NULL: attributes are short, so a memchr for the first
 * byte and a compare beat memmem's setup. */
static const char *find(const char *at, Py_ssize_t size, const char *what, size_t length) {
    const char *end = at + size;
    while ((size_t)(end - at) >= length) {
        const char *first = memchr(at, what[0], (size_t)(end - at) - length + 1);
        if (first == NULL) return NULL;
        if (memcmp(first + 1, what + 1, length - 1) == 0) return first;
        at = first + 1;
    }
    return NULL;
}

static int contains(const char *at, Py_ssize_t size, const char *what, size_t length) {
    return find(at, size, what, length) != NULL;
}

/* _repeat: the first number-rows-repeated or number-columns-repeated attribute's digits
 * (leading zeros dropped, more than 12 digits read as 10**12); 1 without one, or with no digit
 * but zeros (the reader builds at least one). */
static i64 repeat(const char *at, Py_ssize_t size) {
    const char *end = at + size;
    const char *p = at;
    while (p < end) {
        const char *found = find(p, end - p, "number-", 7);
        if (found == NULL) return 1;
        const char *q = found + 7;
        if (end - q >= 13 && memcmp(q, "rows-repeated", 13) == 0) q += 13;
        else if (end - q >= 16 && memcmp(q, "columns-repeated", 16) == 0) q += 16;
        else { p = found + 1; continue; }
        while (q < end && space((unsigned char)*q)) q++;
        if (q == end || *q != '=') { p = found + 1; continue; }
        q++;
        while (q < end && space((unsigned char)*q)) q++;
        if (q == end || (*q != '"' && *q != '\'')) { p = found + 1; continue; }
        q++;
        while (q < end && space((unsigned char)*q)) q++;
        while (q < end && *q == '0') q++;
        const char *digits = q;
        while (q < end && *q >= '0' && *q <= '9') q++;
        Py_ssize_t count = q - digits;
        if (count == 0) return 1;
        if (count > 12) return 1000000000000LL;
        i64 value = 0;
        for (const char *d = digits; d < q; d++) value = value * 10 + (*d - '0');
        return value;
    }
    return 1;
}

/* The tag at data[p] == '<', if one begins there (1): its kind, whether it closes, the span of
 * its attributes and its end (past the ">"); 0 where none does, 2 where one begins and runs to
 * the end of the data. */
static int read_tag(const char *data, Py_ssize_t n, Py_ssize_t p, int *kind, int *closing,
                    Py_ssize_t *a, Py_ssize_t *b, Py_ssize_t *tag_end) {
    Py_ssize_t q = p + 1;
    *closing = 0;
    if (q < n && data[q] == '/') { *closing = 1; q++; }
    if (n - q < 6 || memcmp(data + q, "table:", 6) != 0) return 0;
    q += 6;
    static const struct { const char *name; size_t length; int kind; } names[] = {
        {"table", 5, TABLE}, {"table-row", 9, ROW}, {"table-cell", 10, CELL},
        {"covered-table-cell", 18, CELL},
    };
    Py_ssize_t after = -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        Py_ssize_t stop = q + (Py_ssize_t)names[i].length;
        if (stop < n && memcmp(data + q, names[i].name, names[i].length) == 0) {
            unsigned char c = (unsigned char)data[stop];
            if (space(c) || c == '/' || c == '>') { after = stop; *kind = names[i].kind; break; }
        }
    }
    if (after < 0) return 0;
    /* The first ">" outside quotes. The next ">", '"' and "'" at or past the reading point
     * are kept and looked for again only once it passes them, so a tag of many quoted values
     * costs one pass over it, not one pass per value. */
    const char *stop = data + n, *at = data + after;
    const char *gt = NULL, *dq = NULL, *sq = NULL;
    int gt_none = 0;
    for (;;) {
        if (!gt_none && (gt == NULL || gt < at)) {
            gt = memchr(at, '>', (size_t)(stop - at));
            gt_none = gt == NULL;
        }
        if (gt_none) return 2;
        if (dq == NULL || dq < at) {
            dq = memchr(at, '"', (size_t)(gt - at));
            if (dq == NULL) dq = gt;  /* none before this ">": look again once past it */
        }
        if (sq == NULL || sq < at) {
            sq = memchr(at, '\'', (size_t)(gt - at));
            if (sq == NULL) sq = gt;
        }
        const char *quote = dq < sq ? dq : sq;
        if (quote >= gt) {
            *a = after;
            *b = gt - data;
            *tag_end = *b + 1;
            return 1;
        }
        const char *close = memchr(quote + 1, *quote, (size_t)(stop - quote - 1));
        if (close == NULL) return 2;
        at = close + 1;
    }
}

/* _end_row; SHEET where the row took the sheet past a limit. */
static int end_row(State *s, const Limits *l) {
    if (!s->in_row) return DONE;
    s->in_row = 0;
    s->row = add(s->row, s->row_repeat);
    if (s->width) {
        s->rows = s->row;
        if (s->width > s->columns) s->columns = s->width;
        if (sheet_refused(l, s)) return SHEET;
    }
    return DONE;
}

static int get(PyObject *tuple, Py_ssize_t i, i64 *out) {
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(tuple, i), &overflow);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (overflow > 0 || value > CAP) value = CAP;
    if (overflow < 0 || value < 0) {
        PyErr_SetString(PyExc_ValueError, "counts and limits are not negative");
        return -1;
    }
    *out = value;
    return 0;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t start, end;
    PyObject *state_in, *limits_in;
    if (!PyArg_ParseTuple(args, "y*nnO!O!", &view, &start, &end, &PyTuple_Type, &state_in,
                          &PyTuple_Type, &limits_in))
        return NULL;
    State s;
    Limits l;
    i64 *fields[] = {&s.in_cell, &s.in_row, &s.row, &s.row_repeat, &s.column, &s.width,
                     &s.rows, &s.columns, &s.cells_before};
    i64 *bounds[] = {&l.max_columns, &l.row_limit, &l.max_cells};
    const char *data = view.buf;
    Py_ssize_t n = view.len;
    int event = DONE;
    Py_ssize_t at = start, a = 0, b = 0;
    if (PyTuple_GET_SIZE(state_in) != 9 || PyTuple_GET_SIZE(limits_in) != 3) {
        PyErr_SetString(PyExc_ValueError, "the state has 9 fields and the limits 3");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < 9; i++)
        if (get(state_in, i, fields[i]) < 0) goto fail;
    for (Py_ssize_t i = 0; i < 3; i++)
        if (get(limits_in, i, bounds[i]) < 0) goto fail;
    if (start < 0 || start > n || end < 0) {
        PyErr_SetString(PyExc_ValueError, "start and end are offsets into the data");
        goto fail;
    }
    if (end > n) end = n;

    Py_ssize_t p = start;
    while (p < end) {
        const char *found = memchr(data + p, '<', (size_t)(end - p));
        if (found == NULL) break;
        p = found - data;
        int kind, closing;
        Py_ssize_t attrs, attrs_end, tag_end;
        int found_tag = read_tag(data, n, p, &kind, &closing, &attrs, &attrs_end, &tag_end);
        if (found_tag == 0) {
            p++;
            continue;
        }
        if (found_tag == 2) {
            event = UNENDED;
            at = p;
            break;
        }
        at = p = tag_end;
        const char *attributes = data + attrs;
        Py_ssize_t size = attrs_end - attrs;
        if (s.in_cell) {
            if (closing && kind == CELL) { s.in_cell = 0; continue; }
            event = INSIDE_CELL;
            break;
        }
        if (closing) {
            if (kind == ROW) {
                if ((event = end_row(&s, &l)) != DONE) break;
            } else if (kind == TABLE) {
                event = TABLE_CLOSE;
                break;
            }
            continue;
        }
        int self_closing = size > 0 && attributes[size - 1] == '/';
        if (kind == CELL) {
            if (!s.in_row) continue;
            s.column = add(s.column, repeat(attributes, size));
            if (contains(attributes, size, "office:", 7)
                || contains(attributes, size, "table:formula", 13)) {
                s.width = s.column;
                if (s.column > l.max_columns) { event = WIDE_CELL; break; }
            }
            if (!self_closing) s.in_cell = 1;
        } else if (kind == ROW) {
            if (s.in_row && (event = end_row(&s, &l)) != DONE) break;
            s.in_row = 1;
            s.row_repeat = repeat(attributes, size);
            s.column = s.width = 0;
            if (self_closing && (event = end_row(&s, &l)) != DONE) break;
        } else {
            event = TABLE_OPEN;
            a = attrs;
            b = attrs_end;
            break;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(innn(LLLLLLLLL))", event, at, a, b, s.in_cell, s.in_row, s.row,
                         s.row_repeat, s.column, s.width, s.rows, s.columns, s.cells_before);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Read the .ods table tags of data[start:end] (see the source)."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_odsscan", "The .ods pre-check's tag reader, compiled.", 0,
    methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__odsscan(void) { return PyModuleDef_Init(&module); }
