/*
 * Native webhook mapping: the common shape of every item kind, straight to record bytes.
 *
 * This is an accelerator for producers/webhook/mapping.py, which stays the definition.
 * For each item of a plain body (the shape payload.py builds without pydantic) it builds
 * the same field dict Envelope.build() builds, in the same order, and serializes it with
 * orjson exactly as Envelope.to_bytes() does, so the record bytes are identical.
 * Whenever an item strays from the common shape (a field missing or of an unexpected
 * type, anything mapping.py would turn into an `unknown` with a parse error, any value
 * the envelope would have to validate), the item is handed to the Python mapper
 * (`fallback`) instead. A body whose entries are not plain is not touched at all
 * (map_entries returns None). tests/producers/webhook/test_fastmap.py compares the two
 * paths record for record.
 *
 * Python-level behaviour reproduced here, by the helper that mirrors it:
 *   _ms, _ident, _party, _obj, _str            -> ms(), ident(), party(), obj(), str_of()
 *   map_item dispatch order (_MAPPERS)         -> map_one()
 *   schemas.event_id identity / detail_digest  -> event_id(), detail_digest()
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef FASTMAP_SOURCE_SHA
#define FASTMAP_SOURCE_SHA "unknown"
#endif

/* ---------------------------------------------------------------- SHA-256 (FIPS 180-4) */

typedef struct {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t used;
} sha256_ctx;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_ctx *c, const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
               ((uint32_t)p[4 * i + 2] << 8) | (uint32_t)p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    uint32_t e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) +
                      K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
    c->h[5] += f;
    c->h[6] += g;
    c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->len = 0;
    c->used = 0;
}

static void sha256_update(sha256_ctx *c, const unsigned char *p, size_t n) {
    c->len += n;
    if (c->used) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->buf + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (c->used < 64) return;
        sha256_block(c, c->buf);
        c->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64) sha256_block(c, p);
    memcpy(c->buf, p, n);
    c->used = n;
}

/* Writes the lowercase hex of the digest's first `nhex` hex digits (<= 64) to out. */
static void sha256_hex(const unsigned char *p, size_t n, char *out, int nhex) {
    static const char hexd[] = "0123456789abcdef";
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, p, n);
    uint64_t bits = c.len * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (c.used < 56 ? 56 - c.used : 120 - c.used);
    sha256_update(&c, pad, padlen);
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(&c, lenb, 8);
    for (int i = 0; i < nhex; i++) {
        uint32_t word = c.h[i / 8];
        out[i] = hexd[(word >> (28 - 4 * (i % 8))) & 0xf];
    }
}

/* ------------------------------------------------------------------------- names */

enum {
    S_ID, S_TIME, S_MESSAGING, S_STANDBY, S_MESSAGE, S_MID, S_IS_ECHO, S_RECIPIENT, S_SENDER,
    S_APP_ID, S_METADATA, S_QUICK_REPLY, S_PAYLOAD, S_REPLY_TO, S_ATTACHMENTS, S_TYPE, S_URL,
    S_TITLE, S_STICKER_ID, S_TEXT, S_WATERMARK, S_MIDS, S_TIMESTAMP, S_REACTION, S_ACTION,
    S_EMOJI, S_MESSAGE_EDIT, S_NUM_EDIT, S_DELIVERY, S_READ, S_POSTBACK, S_REFERRAL, S_REF,
    S_SOURCE, S_AD_ID, S_REFERER_URI, S_PASS_TC, S_TAKE_TC, S_REQUEST_TC, S_OPTIN, S_USER_REF,
    S_NOTIF_FREQ, S_CHANNEL, S_SCHEMA_VERSION, S_EVENT_ID, S_KIND, S_PAGE_ID, S_PSID,
    S_DIRECTION, S_OCCURRED_AT, S_THREAD_ID, S_ATTRS, S_RAW, S_INBOUND, S_OUTBOUND, S_WEBHOOK,
    S_PASS, S_TAKE, S_REQUEST, S_UNKNOWN, S_HANDOVER, S_EDIT, S_REPLY_TO_MID,
    S_QUICK_REPLY_PAYLOAD, S_UNDERSCORE, S_EMPTY, S_COUNT
};

static const char *const NAMES[S_COUNT] = {
    "id", "time", "messaging", "standby", "message", "mid", "is_echo", "recipient", "sender",
    "app_id", "metadata", "quick_reply", "payload", "reply_to", "attachments", "type", "url",
    "title", "sticker_id", "text", "watermark", "mids", "timestamp", "reaction", "action",
    "emoji", "message_edit", "num_edit", "delivery", "read", "postback", "referral", "ref",
    "source", "ad_id", "referer_uri", "pass_thread_control", "take_thread_control",
    "request_thread_control", "optin", "user_ref", "notification_messages_frequency",
    "channel", "schema_version", "event_id", "kind", "page_id", "psid", "direction",
    "occurred_at", "thread_id", "attrs", "raw", "inbound", "outbound", "webhook", "pass",
    "take", "request", "unknown", "handover", "edit", "reply_to_mid", "quick_reply_payload",
    "_", ""};

static PyObject *S[S_COUNT];
static PyObject *ONE;               /* schema_version */
static PyObject *dumps;             /* orjson.dumps, set by configure() */
static PyObject *opt_sort_keys;     /* orjson.OPT_SORT_KEYS */
static PyObject *opt_plain;         /* schemas.envelope.PLAIN_JSON */
static PyObject *kw_option;         /* ("option",) */

/* orjson.dumps(value, option=option) */
static PyObject *call_dumps(PyObject *value, PyObject *option) {
    PyObject *args[2] = {value, option};
    return PyObject_Vectorcall(dumps, args, 1, kw_option);
}

#define MAX_MS (((long long)1) << 53)

/* Borrowed item of a dict, NULL when absent (str keys: lookups do not fail). */
static inline PyObject *get(PyObject *d, int key) { return PyDict_GetItemWithError(d, S[key]); }

/* _ms(): 1 and *out for an int (not bool) in [0, 2**53), else 0. */
static int ms(PyObject *v, long long *out) {
    if (v == NULL || !PyLong_Check(v) || PyBool_Check(v)) return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (x < 0 || x >= MAX_MS) return 0;
    *out = x;
    return 1;
}

/* _ident(): a new reference to a str id of 1..64 characters, Py_None, or NULL on error. */
static PyObject *ident(PyObject *v) {
    if (v == NULL || PyBool_Check(v)) Py_RETURN_NONE;
    PyObject *s;
    if (PyLong_Check(v)) {
        s = PyObject_Str(v);
        if (s == NULL) return NULL;
    } else if (PyUnicode_Check(v)) {
        s = Py_NewRef(v);
    } else {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n > 0 && n <= 64) return s;
    Py_DECREF(s);
    Py_RETURN_NONE;
}

/* _party(): the id of item[side]["id"] (new reference), Py_None, or NULL on error. */
static PyObject *party(PyObject *item, int side) {
    PyObject *who = get(item, side);
    if (who == NULL || !PyDict_Check(who)) Py_RETURN_NONE;
    return ident(get(who, S_ID));
}

/* _obj(): the dict at item[key] (borrowed) or NULL (mapping.py raises ItemError). */
static PyObject *obj(PyObject *item, int key) {
    PyObject *v = get(item, key);
    return (v != NULL && PyDict_Check(v)) ? v : NULL;
}

/* _str(): the non-empty str at d[key] (borrowed) or NULL. */
static PyObject *str_of(PyObject *d, int key) {
    PyObject *v = get(d, key);
    return (v != NULL && PyUnicode_Check(v) && PyUnicode_GET_LENGTH(v) > 0) ? v : NULL;
}

/* {k: d[k] for k in keys if d.get(k) is not None} into `into`; -1 on error. */
static int copy_present(PyObject *into, PyObject *d, const int *keys, int n) {
    for (int i = 0; i < n; i++) {
        PyObject *v = get(d, keys[i]);
        if (v != NULL && v != Py_None && PyDict_SetItem(into, S[keys[i]], v) < 0) return -1;
    }
    return 0;
}

/* "ev1_" + sha256(orjson.dumps(identity, OPT_SORT_KEYS)).hexdigest()[:32]; steals ident. */
static PyObject *event_id(PyObject *identity) {
    if (identity == NULL) return NULL;
    PyObject *js = call_dumps(identity, opt_sort_keys);
    Py_DECREF(identity);
    if (js == NULL) return NULL;
    char out[36] = {'e', 'v', '1', '_'};
    sha256_hex((const unsigned char *)PyBytes_AS_STRING(js), (size_t)PyBytes_GET_SIZE(js),
               out + 4, 32);
    Py_DECREF(js);
    return PyUnicode_FromStringAndSize(out, 36);
}

/* detail_digest(): sha256 hex of the item's canonical JSON without routing fields. */
static PyObject *detail_digest(PyObject *item) {
    PyObject *body = PyDict_New();
    if (body == NULL) return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(item, &pos, &k, &v)) {
        /* schemas.event_id.ROUTING_FIELDS; JSON keys are always str. */
        int routing = PyUnicode_Compare(k, S[S_SENDER]) == 0 ||
                      PyUnicode_Compare(k, S[S_RECIPIENT]) == 0 ||
                      PyUnicode_Compare(k, S[S_TIMESTAMP]) == 0;
        if (!routing && PyDict_SetItem(body, k, v) < 0) goto fail;
    }
    PyObject *js = call_dumps(body, opt_sort_keys);
    Py_DECREF(body);
    if (js == NULL) return NULL;
    char out[64];
    sha256_hex((const unsigned char *)PyBytes_AS_STRING(js), (size_t)PyBytes_GET_SIZE(js), out,
               64);
    Py_DECREF(js);
    return PyUnicode_FromStringAndSize(out, 64);
fail:
    Py_DECREF(body);
    return NULL;
}

/* --------------------------------------------------------------------- one item */

typedef struct {
    PyObject *page_id;  /* str */
    long long occurred; /* _ms(timestamp) or entry time or 0 */
    PyObject *item;     /* dict */
    int standby;
} Item;

/* The fields of one envelope, as Envelope.build passes them (new references, or NULL). */
typedef struct {
    int kind;             /* S_* of the kind */
    PyObject *psid;       /* str */
    PyObject *direction;  /* borrowed: S_INBOUND / S_OUTBOUND / Py_None */
    PyObject *mid;        /* str or NULL */
    PyObject *text;       /* str or NULL */
    long long watermark;  /* -1: none */
    long long occurred;
    PyObject *attrs;      /* dict */
    PyObject *identity;   /* list */
} Fields;

static void fields_clear(Fields *f) {
    Py_CLEAR(f->psid);
    Py_CLEAR(f->mid);
    Py_CLEAR(f->text);
    Py_CLEAR(f->attrs);
    Py_CLEAR(f->identity);
}

/* Envelope.build + to_bytes for the fast path: the record value, or NULL. */
static PyObject *envelope_bytes(const Item *it, Fields *f) {
    PyObject *out = NULL, *d = NULL, *eid = NULL, *occ = NULL, *wm = NULL;
    if (it->standby && PyDict_SetItem(f->attrs, S[S_CHANNEL], S[S_STANDBY]) < 0) return NULL;
    eid = event_id(f->identity);
    f->identity = NULL;
    if (eid == NULL) return NULL;
    occ = PyLong_FromLongLong(f->occurred);
    if (occ == NULL) goto done;
    if (f->watermark >= 0) {
        wm = PyLong_FromLongLong(f->watermark);
        if (wm == NULL) goto done;
    }
    d = PyDict_New();
    if (d == NULL) goto done;
    if (PyDict_SetItem(d, S[S_SCHEMA_VERSION], ONE) < 0 ||
        PyDict_SetItem(d, S[S_EVENT_ID], eid) < 0 ||
        PyDict_SetItem(d, S[S_KIND], S[f->kind]) < 0 ||
        PyDict_SetItem(d, S[S_PAGE_ID], it->page_id) < 0 ||
        PyDict_SetItem(d, S[S_PSID], f->psid) < 0 ||
        PyDict_SetItem(d, S[S_DIRECTION], f->direction) < 0 ||
        PyDict_SetItem(d, S[S_MID], f->mid ? f->mid : Py_None) < 0 ||
        PyDict_SetItem(d, S[S_OCCURRED_AT], occ) < 0 ||
        PyDict_SetItem(d, S[S_TEXT], f->text ? f->text : Py_None) < 0 ||
        PyDict_SetItem(d, S[S_WATERMARK], wm ? wm : Py_None) < 0 ||
        PyDict_SetItem(d, S[S_THREAD_ID], Py_None) < 0 ||
        PyDict_SetItem(d, S[S_SOURCE], S[S_WEBHOOK]) < 0 ||
        PyDict_SetItem(d, S[S_ATTRS], f->attrs) < 0 || PyDict_SetItem(d, S[S_RAW], it->item) < 0)
        goto done;
    out = call_dumps(d, opt_plain);
done:
    Py_XDECREF(d);
    Py_XDECREF(eid);
    Py_XDECREF(occ);
    Py_XDECREF(wm);
    return out;
}

/* The sender's id (new reference) or NULL: mapping.py's _user raises ItemError then. */
static PyObject *user(PyObject *item) {
    PyObject *p = party(item, S_SENDER);
    if (p == Py_None) {
        Py_DECREF(p);
        return NULL;
    }
    return p;
}

static PyObject *list_of(int n, ...) {
    /* A list of n new references (stolen); NULL if any is NULL. */
    va_list ap;
    va_start(ap, n);
    PyObject *l = PyList_New(n);
    int ok = l != NULL;
    for (int i = 0; i < n; i++) {
        PyObject *v = va_arg(ap, PyObject *);
        if (v == NULL) ok = 0;
        if (l != NULL && v != NULL) {
            PyList_SET_ITEM(l, i, v);
        } else {
            Py_XDECREF(v);
        }
    }
    va_end(ap);
    if (!ok) {
        /* Unset slots are NULL, which list dealloc skips. */
        Py_XDECREF(l);
        return NULL;
    }
    return l;
}

static PyObject *ll(long long x) { return PyLong_FromLongLong(x); }
static PyObject *ref(PyObject *o) { return Py_NewRef(o); }

static int attachments(PyObject *message, PyObject *attrs) {
    PyObject *atts = get(message, S_ATTACHMENTS);
    if (atts == NULL || !PyList_Check(atts)) return 0;
    PyObject *out = PyList_New(0);
    if (out == NULL) return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(atts); i++) {
        PyObject *att = PyList_GET_ITEM(atts, i);
        if (!PyDict_Check(att)) continue;
        PyObject *payload = get(att, S_PAYLOAD);
        if (payload != NULL && !PyDict_Check(payload)) payload = NULL;
        PyObject *summary = PyDict_New();
        if (summary == NULL) goto fail;
        /* {"type", "url", "title"[, "sticker_id"]} without the None values. */
        PyObject *type = get(att, S_TYPE);
        if (type != NULL && type != Py_None && PyDict_SetItem(summary, S[S_TYPE], type) < 0)
            goto fail_summary;
        for (int k = 0; k < 2; k++) {
            int key = k == 0 ? S_URL : S_TITLE;
            PyObject *v = payload ? get(payload, key) : NULL;
            int truthy = v != NULL ? PyObject_IsTrue(v) : 0;
            if (truthy < 0) goto fail_summary;
            if (!truthy) v = get(att, key);
            if (v != NULL && v != Py_None && PyDict_SetItem(summary, S[key], v) < 0)
                goto fail_summary;
        }
        PyObject *sticker = payload ? get(payload, S_STICKER_ID) : NULL;
        if (sticker != NULL && sticker != Py_None &&
            PyDict_SetItem(summary, S[S_STICKER_ID], sticker) < 0)
            goto fail_summary;
        int appended = PyList_Append(out, summary);
        Py_DECREF(summary);
        if (appended < 0) goto fail;
        continue;
    fail_summary:
        Py_DECREF(summary);
        goto fail;
    }
    int rc = PyList_GET_SIZE(out) ? PyDict_SetItem(attrs, S[S_ATTACHMENTS], out) : 0;
    Py_DECREF(out);
    return rc;
fail:
    Py_DECREF(out);
    return -1;
}

/* Each map_* fills f and returns 0, or returns -1: the item goes to the Python mapper. */

static int map_message(const Item *it, Fields *f) {
    PyObject *message = obj(it->item, S_MESSAGE);
    if (message == NULL) return -1;
    PyObject *mid = str_of(message, S_MID);
    if (mid == NULL) return -1;
    f->kind = S_MESSAGE;
    f->mid = ref(mid);
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    if (get(message, S_IS_ECHO) == Py_True) {
        PyObject *psid = party(it->item, S_RECIPIENT);
        if (psid == NULL || psid == Py_None) {
            Py_XDECREF(psid);
            return -1;
        }
        f->psid = psid;
        f->direction = S[S_OUTBOUND];
        if (PyDict_SetItem(f->attrs, S[S_IS_ECHO], Py_True) < 0) return -1;
        static const int echo_keys[] = {S_APP_ID, S_METADATA};
        if (copy_present(f->attrs, message, echo_keys, 2) < 0) return -1;
    } else {
        if ((f->psid = user(it->item)) == NULL) return -1;
        f->direction = S[S_INBOUND];
    }
    PyObject *qr = get(message, S_QUICK_REPLY);
    if (qr != NULL && PyDict_Check(qr)) {
        PyObject *p = get(qr, S_PAYLOAD);
        if (p != NULL && p != Py_None && PyDict_SetItem(f->attrs, S[S_QUICK_REPLY_PAYLOAD], p) < 0)
            return -1;
    }
    PyObject *rt = get(message, S_REPLY_TO);
    if (rt != NULL && PyDict_Check(rt)) {
        PyObject *m = get(rt, S_MID);
        if (m != NULL && m != Py_None && PyDict_SetItem(f->attrs, S[S_REPLY_TO_MID], m) < 0)
            return -1;
    }
    if (attachments(message, f->attrs) < 0) return -1;
    PyObject *text = get(message, S_TEXT);
    if (text != NULL && PyUnicode_Check(text)) f->text = ref(text);
    f->identity = list_of(3, ref(S[S_MESSAGE]), ref(it->page_id), ref(mid));
    return f->identity ? 0 : -1;
}

static int map_watermarked(const Item *it, Fields *f, int kind) {
    PyObject *body = obj(it->item, kind);
    if (body == NULL) return -1;
    long long watermark;
    if (!ms(get(body, S_WATERMARK), &watermark)) return -1;
    f->kind = kind;
    f->watermark = watermark;
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    PyObject *mids = get(body, S_MIDS);
    if (mids != NULL && PyList_Check(mids)) {
        PyObject *kept = PyList_New(0);
        if (kept == NULL) return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(mids); i++) {
            PyObject *m = PyList_GET_ITEM(mids, i);
            if (PyUnicode_Check(m) && PyList_Append(kept, m) < 0) {
                Py_DECREF(kept);
                return -1;
            }
        }
        int rc = PyDict_SetItem(f->attrs, S[S_MIDS], kept);
        Py_DECREF(kept);
        if (rc < 0) return -1;
    }
    long long ts;
    f->occurred = (ms(get(it->item, S_TIMESTAMP), &ts) && ts) ? ts : watermark;
    if ((f->psid = user(it->item)) == NULL) return -1;
    f->direction = Py_None;
    f->identity = list_of(4, ref(S[kind]), ref(it->page_id), ref(f->psid), ll(watermark));
    return f->identity ? 0 : -1;
}

static int map_reaction(const Item *it, Fields *f) {
    PyObject *body = obj(it->item, S_REACTION);
    if (body == NULL) return -1;
    PyObject *action = str_of(body, S_ACTION);
    PyObject *emoji = str_of(body, S_EMOJI);
    action = action ? action : S[S_EMPTY];
    emoji = emoji ? emoji : S[S_EMPTY];
    f->kind = S_REACTION;
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    if (PyDict_SetItem(f->attrs, S[S_ACTION], action) < 0 ||
        PyDict_SetItem(f->attrs, S[S_EMOJI], emoji) < 0)
        return -1;
    PyObject *reaction = get(body, S_REACTION);
    if (reaction != NULL && reaction != Py_None &&
        PyDict_SetItem(f->attrs, S[S_REACTION], reaction) < 0)
        return -1;
    if ((f->psid = user(it->item)) == NULL) return -1;
    PyObject *mid = str_of(body, S_MID);
    if (mid == NULL) return -1;
    f->mid = ref(mid);
    f->direction = S[S_INBOUND];
    PyObject *detail = PyUnicode_FromFormat("%U:%U", action, emoji);
    f->identity = list_of(6, ref(S[S_REACTION]), ref(it->page_id), ref(f->psid), ref(mid),
                          detail, ll(f->occurred));
    return f->identity ? 0 : -1;
}

static int map_edit(const Item *it, Fields *f) {
    PyObject *body = obj(it->item, S_MESSAGE_EDIT);
    if (body == NULL) return -1;
    PyObject *num_edit = get(body, S_NUM_EDIT);
    if (num_edit == Py_None) num_edit = NULL;
    f->kind = S_EDIT;
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    if (num_edit != NULL && PyDict_SetItem(f->attrs, S[S_NUM_EDIT], num_edit) < 0) return -1;
    if ((f->psid = user(it->item)) == NULL) return -1;
    PyObject *mid = str_of(body, S_MID);
    if (mid == NULL) return -1;
    f->mid = ref(mid);
    f->direction = S[S_INBOUND];
    PyObject *text = get(body, S_TEXT);
    if (text != NULL && PyUnicode_Check(text)) f->text = ref(text);
    PyObject *detail = num_edit != NULL ? PyObject_Str(num_edit) : ref(Py_None);
    f->identity = list_of(4, ref(S[S_EDIT]), ref(it->page_id), ref(mid), detail);
    return f->identity ? 0 : -1;
}

static int map_postback(const Item *it, Fields *f) {
    PyObject *body = obj(it->item, S_POSTBACK);
    if (body == NULL) return -1;
    f->kind = S_POSTBACK;
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    static const int keys[] = {S_TITLE, S_PAYLOAD, S_REFERRAL};
    if (copy_present(f->attrs, body, keys, 3) < 0) return -1;
    if ((f->psid = user(it->item)) == NULL) return -1;
    f->direction = S[S_INBOUND];
    PyObject *mid = str_of(body, S_MID);
    if (mid != NULL) f->mid = ref(mid);
    PyObject *title = get(body, S_TITLE);
    if (title != NULL && PyUnicode_Check(title)) f->text = ref(title);
    if (mid != NULL) {
        f->identity = list_of(3, ref(S[S_POSTBACK]), ref(it->page_id), ref(mid));
    } else {
        PyObject *payload = get(body, S_PAYLOAD);
        PyObject *detail = (payload != NULL && PyUnicode_Check(payload)) ? payload : Py_None;
        f->identity = list_of(5, ref(S[S_POSTBACK]), ref(it->page_id), ref(f->psid),
                              ll(f->occurred), ref(detail));
    }
    return f->identity ? 0 : -1;
}

/* The identity of the kinds named by a digest: [kind, page, psid, occurred_at, digest]. */
static int digest_identity(const Item *it, Fields *f) {
    f->identity = list_of(5, ref(S[f->kind]), ref(it->page_id), ref(f->psid), ll(f->occurred),
                          detail_digest(it->item));
    return f->identity ? 0 : -1;
}

static int map_referral(const Item *it, Fields *f) {
    PyObject *body = obj(it->item, S_REFERRAL);
    if (body == NULL) return -1;
    f->kind = S_REFERRAL;
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    static const int keys[] = {S_REF, S_SOURCE, S_TYPE, S_AD_ID, S_REFERER_URI};
    if (copy_present(f->attrs, body, keys, 5) < 0) return -1;
    if ((f->psid = user(it->item)) == NULL) return -1;
    f->direction = S[S_INBOUND];
    return digest_identity(it, f);
}

static int map_handover(const Item *it, Fields *f, int key, int action) {
    PyObject *body = obj(it->item, key);
    if (body == NULL) return -1;
    f->kind = S_HANDOVER;
    if ((f->attrs = PyDict_Copy(body)) == NULL) return -1;
    if (PyDict_SetItem(f->attrs, S[S_ACTION], S[action]) < 0) return -1;
    if ((f->psid = user(it->item)) == NULL) return -1;
    f->direction = Py_None;
    return digest_identity(it, f);
}

static int map_optin(const Item *it, Fields *f) {
    PyObject *body = obj(it->item, S_OPTIN);
    if (body == NULL) return -1;
    PyObject *psid = party(it->item, S_SENDER);
    if (psid == Py_None) {
        Py_DECREF(psid);
        PyObject *sender = get(it->item, S_SENDER);
        psid = (sender != NULL && PyDict_Check(sender)) ? ident(get(sender, S_USER_REF))
                                                        : ref(Py_None);
        if (psid == Py_None) {
            Py_DECREF(psid);
            psid = ident(get(body, S_USER_REF));
        }
    }
    if (psid == NULL || psid == Py_None) {
        Py_XDECREF(psid);
        return -1;
    }
    f->psid = psid;
    f->kind = S_OPTIN;
    f->direction = Py_None;
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    static const int keys[] = {S_TYPE, S_REF, S_PAYLOAD, S_USER_REF, S_TITLE, S_NOTIF_FREQ};
    if (copy_present(f->attrs, body, keys, 6) < 0) return -1;
    return digest_identity(it, f);
}

static int map_unknown(const Item *it, Fields *f) {
    f->kind = S_UNKNOWN;
    f->direction = Py_None;
    for (int side = 0; side < 2 && f->psid == NULL; side++) {
        PyObject *p = party(it->item, side == 0 ? S_SENDER : S_RECIPIENT);
        if (p == NULL) return -1;
        if (p != Py_None) {
            int same = PyUnicode_Compare(p, it->page_id);
            if (same == -1 && PyErr_Occurred()) {
                Py_DECREF(p);
                return -1;
            }
            if (same != 0) {
                f->psid = p;
                break;
            }
        }
        Py_DECREF(p);
    }
    if (f->psid == NULL) f->psid = ref(S[S_UNDERSCORE]);
    if ((f->attrs = PyDict_New()) == NULL) return -1;
    return digest_identity(it, f);
}

/* map_item(): the first key of _MAPPERS present in the item picks the mapper. */
static int map_one(const Item *it, Fields *f) {
    PyObject *item = it->item;
#define HAS(key) (PyDict_GetItemWithError(item, S[key]) != NULL)
    if (HAS(S_MESSAGE)) return map_message(it, f);
    if (HAS(S_MESSAGE_EDIT)) return map_edit(it, f);
    if (HAS(S_REACTION)) return map_reaction(it, f);
    if (HAS(S_DELIVERY)) return map_watermarked(it, f, S_DELIVERY);
    if (HAS(S_READ)) return map_watermarked(it, f, S_READ);
    if (HAS(S_POSTBACK)) return map_postback(it, f);
    if (HAS(S_PASS_TC)) return map_handover(it, f, S_PASS_TC, S_PASS);
    if (HAS(S_TAKE_TC)) return map_handover(it, f, S_TAKE_TC, S_TAKE);
    if (HAS(S_REQUEST_TC)) return map_handover(it, f, S_REQUEST_TC, S_REQUEST);
    if (HAS(S_OPTIN)) return map_optin(it, f);
    if (HAS(S_REFERRAL)) return map_referral(it, f);
#undef HAS
    return map_unknown(it, f);
}

/* ------------------------------------------------------------------------ entries */

/* Which of the entry model's keys k is: 0..3 (id, time, messaging, standby), -1 other. */
static int entry_key(PyObject *k) {
    static const int keys[4] = {S_ID, S_TIME, S_MESSAGING, S_STANDBY};
    for (int i = 0; i < 4; i++) {
        if (k == S[keys[i]]) return i;
    }
    if (!PyUnicode_CheckExact(k)) return -1;
    for (int i = 0; i < 4; i++) {
        if (PyUnicode_Compare(k, S[keys[i]]) == 0) return i;
    }
    return -1;
}

/* payload._plain_entry() of an entry without extra keys: its page id (new ref) or NULL. */
static PyObject *plain_entry(PyObject *entry) {
    if (!PyDict_CheckExact(entry)) return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(entry, &pos, &k, &v)) {
        int which = entry_key(k);
        /* Other entry keys are counted as ignored: Python's path does that. */
        if (which < 0) return NULL;
        if (which >= 2) {
            if (!PyList_CheckExact(v)) return NULL;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++) {
                if (!PyDict_CheckExact(PyList_GET_ITEM(v, i))) return NULL;
            }
        }
    }
    PyObject *when = get(entry, S_TIME);
    if (when != NULL && when != Py_None && !PyLong_CheckExact(when)) return NULL;
    PyObject *page = get(entry, S_ID);
    if (page == NULL) return NULL;
    PyObject *s;
    if (PyLong_CheckExact(page)) {
        if ((s = PyObject_Str(page)) == NULL) return NULL;
    } else if (PyUnicode_CheckExact(page)) {
        s = Py_NewRef(page);
    } else {
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int ok = n > 0 && n <= 64 && PyUnicode_IS_ASCII(s);
    if (ok) {
        const char *c = (const char *)PyUnicode_DATA(s);
        for (Py_ssize_t i = 0; i < n && ok; i++) ok = c[i] >= '0' && c[i] <= '9';
    }
    if (!ok) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *d, *sk, *pl;
    if (!PyArg_ParseTuple(args, "OOO:configure", &d, &sk, &pl)) return NULL;
    Py_XSETREF(dumps, Py_NewRef(d));
    Py_XSETREF(opt_sort_keys, Py_NewRef(sk));
    Py_XSETREF(opt_plain, Py_NewRef(pl));
    Py_RETURN_NONE;
}

/* One item: append its kind and record value, natively or through `fallback`. */
static int emit(const Item *it, PyObject *entry_time, PyObject *fallback, PyObject *key,
                PyObject *records, PyObject *kinds) {
    Fields f = {0};
    f.watermark = -1;
    f.occurred = it->occurred;
    PyObject *value = NULL, *kind = NULL;
    if (map_one(it, &f) == 0) value = envelope_bytes(it, &f);
    if (value != NULL) {
        kind = Py_NewRef(S[f.kind]);
    } else {
        /* Anything off the common shape, or any error: the Python mapper decides. */
        PyErr_Clear();
        PyObject *env = PyObject_CallFunctionObjArgs(
            fallback, it->page_id, entry_time, it->item, S[it->standby ? S_STANDBY : S_MESSAGING],
            NULL);
        if (env == NULL) goto fail;
        kind = PyObject_GetAttr(env, S[S_KIND]);
        value = kind ? PyObject_CallMethod(env, "to_bytes", NULL) : NULL;
        Py_DECREF(env);
        if (value == NULL) goto fail;
    }
    fields_clear(&f);
    PyObject *rec = PyTuple_Pack(2, key, value);
    Py_DECREF(value);
    if (rec == NULL) {
        Py_DECREF(kind);
        return -1;
    }
    int rc = PyList_Append(records, rec);
    Py_DECREF(rec);
    if (rc == 0) rc = PyList_Append(kinds, kind);
    Py_DECREF(kind);
    return rc;
fail:
    fields_clear(&f);
    Py_XDECREF(kind);
    return -1;
}

static PyObject *map_entries(PyObject *self, PyObject *args) {
    PyObject *entries, *fallback;
    if (!PyArg_ParseTuple(args, "O!O:map_entries", &PyList_Type, &entries, &fallback))
        return NULL;
    if (dumps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastmap.configure() was not called");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(entries);
    /* Every entry is checked before any item is mapped: a body is mapped by one path. */
    PyObject *pages = PyList_New(n);
    if (pages == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *page = plain_entry(PyList_GET_ITEM(entries, i));
        if (page == NULL) {
            Py_DECREF(pages);
            if (PyErr_Occurred()) return NULL;
            Py_RETURN_NONE;
        }
        PyList_SET_ITEM(pages, i, page);
    }
    PyObject *records = PyList_New(0), *kinds = PyList_New(0), *result = NULL;
    if (records == NULL || kinds == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyList_GET_ITEM(entries, i);
        PyObject *page = PyList_GET_ITEM(pages, i);
        long long when;
        int has_time = ms(get(entry, S_TIME), &when);
        PyObject *entry_time = has_time ? PyLong_FromLongLong(when) : Py_NewRef(Py_None);
        PyObject *key = entry_time ? PyUnicode_AsUTF8String(page) : NULL;
        if (key == NULL) {
            Py_XDECREF(entry_time);
            goto done;
        }
        int failed = 0;
        for (int ch = 0; ch < 2 && !failed; ch++) {
            PyObject *items = get(entry, ch == 0 ? S_MESSAGING : S_STANDBY);
            if (items == NULL) continue;
            for (Py_ssize_t j = 0; j < PyList_GET_SIZE(items) && !failed; j++) {
                Item it = {page, 0, PyList_GET_ITEM(items, j), ch};
                long long ts;
                it.occurred = (ms(get(it.item, S_TIMESTAMP), &ts) && ts) ? ts
                              : (has_time && when)                        ? when
                                                                          : 0;
                failed = emit(&it, entry_time, fallback, key, records, kinds) < 0;
            }
        }
        Py_DECREF(entry_time);
        Py_DECREF(key);
        if (failed) goto done;
    }
    result = PyTuple_Pack(2, records, kinds);
done:
    Py_DECREF(pages);
    Py_XDECREF(records);
    Py_XDECREF(kinds);
    return result;
}

static PyObject *py_sha256_hex(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    char out[64];
    sha256_hex((const unsigned char *)view.buf, (size_t)view.len, out, 64);
    PyBuffer_Release(&view);
    return PyUnicode_FromStringAndSize(out, 64);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(dumps, sort_keys_option, plain_option): orjson's dumps and the options."},
    {"map_entries", map_entries, METH_VARARGS,
     "map_entries(entries, fallback) -> (records, kinds) | None."},
    {"sha256_hex", py_sha256_hex, METH_O, "sha256_hex(data) -> the hex digest (for tests)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastmap",
    .m_doc = "Native webhook mapping (see mapping.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastmap(void) {
    for (int i = 0; i < S_COUNT; i++) {
        if (S[i] == NULL && (S[i] = PyUnicode_InternFromString(NAMES[i])) == NULL) return NULL;
    }
    if (ONE == NULL && (ONE = PyLong_FromLong(1)) == NULL) return NULL;
    if (kw_option == NULL) {
        /* orjson matches keyword names by identity: the name must be the interned one. */
        PyObject *name = PyUnicode_InternFromString("option");
        kw_option = name ? PyTuple_Pack(1, name) : NULL;
        Py_XDECREF(name);
        if (kw_option == NULL) return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddStringConstant(m, "SOURCE_SHA", FASTMAP_SOURCE_SHA) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
