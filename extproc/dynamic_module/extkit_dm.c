/* An Envoy HTTP filter (dynamic module, Envoy 1.40's ABI) that runs an extproc.Processor's
 * hooks inside the data-plane Envoy, with CPython embedded: headers, bodies in every ext_proc
 * body mode, and trailers, both ways.
 *
 * Threads: Envoy's worker threads never take the GIL. A worker copies what a phase carries
 * (headers, a body, trailers) into an event, queues it, wakes the Python thread through an
 * eventfd and stops the stream. The Python thread (an asyncio loop, bridge.py) runs the hook
 * and answers; the answer is stored on the stream and Envoy's scheduler runs
 * on_http_filter_scheduled on the stream's worker, which applies it and goes on. A slow hook
 * holds only its own stream.
 *
 * Bodies, as Envoy's ext_proc filter sends them:
 * - BUFFERED / BUFFERED_PARTIAL: Envoy buffers the body (the headers held, so the body's
 *   answer may still change them); the whole body (or what the buffer limit holds) goes to
 *   Python once, and its answer replaces those bytes.
 * - STREAMED / FULL_DUPLEX_STREAMED: one piece at a time. While Python has a piece, what
 *   arrives stays in Envoy's buffer behind the answered bytes (all of it under Envoy's buffer
 *   limit and flow control), and goes to Python as the next piece; the direction goes on, with
 *   everything answered, whenever Python has answered all that came. A direction is never
 *   continued while Python has a piece of it, so no continue is one Envoy ignores.
 * Trailers wait until the body before them is answered.
 *
 * Lifetimes: a stream is reference-counted: one reference for Envoy (dropped in
 * on_http_filter_destroy) and one per event Python has not answered yet. The scheduler is
 * deleted under the stream's lock when Envoy destroys the filter, so a late answer from
 * Python finds no scheduler and is dropped.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "abi.h"

#define EXPORT __attribute__((visibility("default")))

#ifndef DEFAULT_PYTHON
#error "build with -DDEFAULT_PYTHON=\"/path/to/venv/bin/python\" (extproc.dynamic_module.build does)"
#endif
#ifndef LIBPYTHON
#error "build with -DLIBPYTHON=\"libpython3.X.so.1.0\" (extproc.dynamic_module.build does)"
#endif

/* Event kinds; a phase's kind is also its scheduler event id. Same numbers in the bridge. */
enum {
  EV_REQUEST_HEADERS = 1,
  EV_RESPONSE_HEADERS = 2,
  EV_END = 3,
  EV_REQUEST_BODY = 4,
  EV_RESPONSE_BODY = 5,
  EV_REQUEST_TRAILERS = 6,
  EV_RESPONSE_TRAILERS = 7,
  EV_KINDS = 8,
};
/* Header operations in an answer. */
enum { OP_SET = 0, OP_ADD = 1, OP_REMOVE = 2 };
/* Hooks a config's class defines (from the bridge). */
enum {
  HOOK_REQUEST_HEADERS = 1,
  HOOK_RESPONSE_HEADERS = 2,
  HOOK_REQUEST_TRAILERS = 4,
  HOOK_RESPONSE_TRAILERS = 8,
};
/* Body modes (from the bridge). */
enum { BM_NONE = 0, BM_STREAMED = 1, BM_BUFFERED = 2, BM_PARTIAL = 3, BM_DUPLEX = 4 };
enum { REQUEST = 0, RESPONSE = 1 };

static int direction_of(int kind) {
  return kind == EV_RESPONSE_HEADERS || kind == EV_RESPONSE_BODY || kind == EV_RESPONSE_TRAILERS;
}
static int is_body(int kind) { return kind == EV_REQUEST_BODY || kind == EV_RESPONSE_BODY; }
static int is_trailers(int kind) {
  return kind == EV_REQUEST_TRAILERS || kind == EV_RESPONSE_TRAILERS;
}

typedef struct {
  int op;
  char *name;
  size_t name_len;
  char *value; /* NULL for OP_REMOVE */
  size_t value_len;
} header_op;

typedef struct {
  char *ns;
  size_t ns_len;
  char *data; /* a serialized google.protobuf.Struct */
  size_t data_len;
} meta_entry;

typedef struct {
  int kind;    /* 0: no answer waiting */
  int reply;   /* a local reply instead of going on */
  int abandon; /* the message timeout passed, failing open: go on, no more phases */
  int timed_out; /* the watchdog's answer to the message timeout */
  int clear_route; /* have Envoy pick the route again (request phases) */
  int replace;     /* headers: this direction's body is ``body`` (CONTINUE_AND_REPLACE) */
  int override;    /* a mode override: the stream's body modes and phases from now on */
  int override_body_mode[2];
  int override_hooks;
  meta_entry *meta; /* dynamic metadata: a serialized Struct per namespace */
  size_t n_meta;
  uint32_t status;
  header_op *ops; /* header (or trailer) changes, or the local reply's headers (OP_SET) */
  size_t n_ops;
  int has_body; /* a body phase's new bytes (else: unchanged) */
  char *body;   /* those, or the local reply's body */
  size_t body_len;
  char *details;
  size_t details_len;
} answer;

typedef struct {
  char *name; /* as Envoy's ext_proc names it: "request.path" */
  size_t name_len;
  int id;   /* in the ABI's attribute enum */
  int kind; /* ATTR_STRING or ATTR_INT */
} attribute;

enum { ATTR_STRING = 0, ATTR_INT = 1 };

typedef struct {
  long id; /* the bridge's handle of the class */
  int hooks;
  int body_mode[2];
  long timeout_ms; /* the class's message_timeout */
  int fail_open;   /* no answer in time: go on unchanged instead of 504 */
  int observe;     /* observability mode: phases go to Python, Envoy does not wait */
  attribute *attributes[2]; /* sent with each direction's headers */
  size_t n_attributes[2];
  size_t counters[4]; /* Envoy stats (0: not defined), by the COUNT_ kinds */
} filter_config;

/* The module's Envoy stats, named as Envoy's ext_proc filter names its own. */
enum { COUNT_STREAMS, COUNT_TIMEOUTS, COUNT_FAILED_OPEN, COUNT_IMMEDIATE };
static const char *const counter_names[] = {"streams_started", "message_timeouts",
                                            "failure_mode_allowed", "immediate_responses"};

static void count(dm_filter_envoy filter, const filter_config *c, int which) {
  if (c->counters[which] != 0) {
    envoy_dynamic_module_callback_http_filter_increment_counter(filter, c->counters[which],
                                                                NULL, 0, 1);
  }
}

struct stream;

/* A waiting phase's deadline, on the watchdog's list (under watch_lock). */
typedef struct watch_node {
  struct stream *stream;
  struct watch_node *prev, *next;
  int listed;
  int dir;
  uint64_t seq; /* the listed phase's number in its direction */
  struct timespec deadline;
} watch_node;

typedef struct {
  int waiting;  /* under lock: the phase waiting for Python's answer (0: none) */
  uint64_t seq; /* under lock: the number of the last phase sent (the waiting one's) */
  /* the rest: the stream's worker only */
  int phase;        /* the phase sent to Python whose answer is not applied yet (0: none) */
  int held;         /* headers stopped until the (buffered) body is answered */
  int body_started; /* a body callback came */
  int body_sent;    /* BUFFERED/PARTIAL: the body went to Python */
  int body_done;    /* BUFFERED/PARTIAL: and was answered */
  int eos;          /* the end of this direction arrived (last data or trailers) */
  int headers_eos;  /* it ended with its headers: no body, no trailers */
  int trailers;     /* trailers arrived (and are stopped, unless passed on) */
  int replaced;     /* the headers' answer replaced the body: what comes is dropped */
  int eos_sent;     /* a body event with end_of_stream went to Python */
  size_t sent_len;  /* the bytes at the buffer's front that Python has (to replace) */
  size_t front;     /* STREAMED/FULL_DUPLEX: the answered bytes at the front of Envoy's
                     * buffer (what follows them Python has not seen) */
  int continued;    /* Envoy drops a continue until this direction's next callback stops it
                     * (its filter's own flag, mirrored: set by a continue or a callback
                     * returning Continue, cleared by one returning a Stop status) */
  char *inflight;   /* STREAMED/FULL_DUPLEX: the piece Python has (taken out of Envoy's
                     * buffer; what goes on if the answer leaves it unchanged or times out) */
  size_t inflight_len;
  watch_node watch;
} direction;

typedef struct stream {
  atomic_int refs;
  uint64_t serial;        /* unique in this process (an address is reused once freed) */
  pthread_mutex_t lock;
  const filter_config *config;
  int hooks;              /* worker: the phases sent (a mode override changes them) */
  int body_mode[2];       /* worker: the body modes */
  dm_scheduler scheduler; /* under lock; NULL once Envoy destroyed the filter */
  int alive;              /* under lock */
  int python_holds;       /* under lock: the bridge keeps a Processor for this stream */
  int abandoned;          /* under lock: timed out failing open, no more phases */
  int local_replied;      /* worker only */
  answer pending[EV_KINDS]; /* under lock: answers for the worker, one per phase kind */
  direction dir[2];
} stream;

typedef struct event {
  struct event *next;
  stream *stream;
  int kind;
  int eos;
  int observed; /* observability mode: nobody waits for an answer */
  long config_id;
  char *bytes; /* the body, or the serialized ProcessingRequest of headers or trailers */
  size_t body_len;
} event;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static event *queue_head, *queue_tail;
static int wake_fd = -1;
static int python_ready;

static void log_line(dm_log_level level, const char *text) {
  dm_module_buffer message = {text, strlen(text)};
  envoy_dynamic_module_callback_log(level, message);
}

static void *must(void *pointer) {
  if (pointer == NULL) {
    log_line(DM_LOG_ERROR, "extkit_dm: out of memory");
    abort();
  }
  return pointer;
}

/* -- streams ------------------------------------------------------------------------------- */

static void free_answer(answer *a) {
  for (size_t i = 0; i < a->n_ops; i++) {
    free(a->ops[i].name);
    free(a->ops[i].value);
  }
  free(a->ops);
  for (size_t i = 0; i < a->n_meta; i++) {
    free(a->meta[i].ns);
    free(a->meta[i].data);
  }
  free(a->meta);
  free(a->body);
  free(a->details);
  memset(a, 0, sizeof(*a));
}

static void unref(stream *s) {
  if (atomic_fetch_sub(&s->refs, 1) == 1) {
    for (int k = 0; k < EV_KINDS; k++) {
      free_answer(&s->pending[k]);
    }
    for (int d = 0; d < 2; d++) {
      free(s->dir[d].inflight);
    }
    pthread_mutex_destroy(&s->lock);
    free(s);
  }
}

static int abandoned(stream *s) {
  pthread_mutex_lock(&s->lock);
  int gone = s->abandoned;
  pthread_mutex_unlock(&s->lock);
  return gone;
}

static void enqueue(event *ev) {
  pthread_mutex_lock(&queue_lock);
  int was_empty = queue_head == NULL;
  if (queue_tail) {
    queue_tail->next = ev;
  } else {
    queue_head = ev;
  }
  queue_tail = ev;
  pthread_mutex_unlock(&queue_lock);
  if (was_empty) {
    /* The bridge drains the whole queue per wake-up and clears the eventfd before it takes
     * the queue, so one write per empty-to-nonempty transition is enough. */
    uint64_t one = 1;
    while (write(wake_fd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
  }
}

static event *new_event(stream *s, int kind, size_t bytes) {
  event *ev = must(malloc(sizeof(event) + bytes));
  ev->next = NULL;
  ev->stream = s;
  ev->kind = kind;
  ev->eos = 0;
  ev->observed = 0;
  ev->config_id = s->config->id;
  ev->bytes = (char *)(ev + 1);
  ev->body_len = 0;
  return ev;
}

/* -- protobuf wire format: what Python parses (upb) faster than it builds ---------------------- */

static size_t varint_size(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    size++;
  }
  return size;
}

static char *put_varint(char *at, uint64_t value) {
  while (value >= 0x80) {
    *at++ = (char)(value | 0x80);
    value >>= 7;
  }
  *at++ = (char)value;
  return at;
}

/* A length-delimited field: its tag (field number < 16), its length, then ``len`` bytes. */
static size_t field_size(size_t len) { return 1 + varint_size(len) + len; }
static char *put_field(char *at, int number, size_t len) {
  *at++ = (char)((number << 3) | 2);
  return put_varint(at, len);
}

/* The attributes Envoy's ext_proc filter sends with this direction's headers, as the value of
 * ProcessingRequest.attributes["envoy.filters.http.ext_proc"] (a Struct); NULL when none. An
 * attribute Envoy has no value for is left out. */
static char *attributes_struct(dm_filter_envoy filter, const filter_config *c, int d,
                               size_t *len) {
  size_t n = c->n_attributes[d];
  if (n == 0) {
    return NULL;
  }
  size_t cap = 64;
  for (size_t i = 0; i < n; i++) {
    cap += c->attributes[d][i].name_len + 32;
  }
  char *out = must(malloc(cap));
  size_t used = 0;
  for (size_t i = 0; i < n; i++) {
    const attribute *a = &c->attributes[d][i];
    char value[16];
    const char *text = NULL;
    size_t value_len = 0, text_len = 0;
    if (a->kind == ATTR_INT) {
      uint64_t number;
      if (!envoy_dynamic_module_callback_http_filter_get_attribute_int(filter, a->id, &number)) {
        continue;
      }
      double as_double = (double)number; /* Value.number_value: fixed64, little-endian */
      value[0] = (char)((2 << 3) | 1);
      memcpy(value + 1, &as_double, 8);
      value_len = 9;
    } else {
      dm_envoy_buffer got = {NULL, 0};
      if (!envoy_dynamic_module_callback_http_filter_get_attribute_string(filter, a->id,
                                                                          &got)) {
        continue;
      }
      text = got.ptr;
      text_len = got.length;
      value_len = field_size(text_len); /* Value.string_value = 3 */
    }
    /* Struct.fields entry: key = 1, value = 2 */
    size_t entry_len = field_size(a->name_len) + field_size(value_len);
    size_t need = field_size(entry_len);
    if (used + need > cap) {
      cap = (used + need) * 2;
      out = must(realloc(out, cap));
    }
    char *at = put_field(out + used, 1, entry_len);
    at = put_field(at, 1, a->name_len);
    memcpy(at, a->name, a->name_len);
    at = put_field(at + a->name_len, 2, value_len);
    if (text != NULL || a->kind == ATTR_STRING) {
      at = put_field(at, 3, text_len);
      memcpy(at, text, text_len);
      at += text_len;
    } else {
      memcpy(at, value, value_len);
      at += value_len;
    }
    used = (size_t)(at - out);
  }
  *len = used;
  return out;
}

/* A header map as the ProcessingRequest Envoy's ext_proc filter sends for this phase
 * (HttpHeaders or HttpTrailers in field ``kind``'s place; values as raw_value bytes), copied
 * into an event for the Python thread: a stopped stream's map is Envoy's to free if the stream
 * is reset, so the bridge never reads Envoy's memory. */
static event *headers_event(dm_filter_envoy filter, stream *s, dm_header_map map, int kind,
                            int eos) {
  size_t n = envoy_dynamic_module_callback_http_get_headers_size(filter, map);
  dm_envoy_header stack_headers[32];
  dm_envoy_header *headers = n <= 32 ? stack_headers : must(malloc(n * sizeof(*headers)));
  if (n && !envoy_dynamic_module_callback_http_get_headers(filter, map, headers)) {
    n = 0;
  }
  int trailers = is_trailers(kind);
  size_t map_len = 0; /* HeaderMap: repeated HeaderValue headers = 1 */
  for (size_t i = 0; i < n; i++) {
    /* HeaderValue: key = 1, raw_value = 3 */
    map_len += field_size(field_size(headers[i].key_length) +
                          field_size(headers[i].value_length));
  }
  /* HttpHeaders: headers = 1, end_of_stream = 3; HttpTrailers: trailers = 1 */
  size_t part_len = field_size(map_len) + (!trailers && eos ? 2 : 0);
  /* ProcessingRequest: request_headers = 2 ... response_trailers = 7 */
  int number = kind == EV_REQUEST_HEADERS    ? 2
               : kind == EV_RESPONSE_HEADERS ? 3
               : kind == EV_REQUEST_TRAILERS ? 6
                                             : 7;
  static const char ext_proc[] = "envoy.filters.http.ext_proc";
  size_t struct_len = 0, entry_len = 0;
  char *attributes = trailers ? NULL
                              : attributes_struct(filter, s->config, direction_of(kind),
                                                  &struct_len);
  if (attributes != NULL) {
    /* ProcessingRequest.attributes = 9: a map entry, key = 1, value = 2 */
    entry_len = field_size(sizeof(ext_proc) - 1) + field_size(struct_len);
  }
  event *ev = new_event(s, kind,
                        field_size(part_len) + (attributes != NULL ? field_size(entry_len) : 0));
  char *at = ev->bytes;
  if (attributes != NULL) {
    at = put_field(at, 9, entry_len);
    at = put_field(at, 1, sizeof(ext_proc) - 1);
    memcpy(at, ext_proc, sizeof(ext_proc) - 1);
    at = put_field(at + sizeof(ext_proc) - 1, 2, struct_len);
    memcpy(at, attributes, struct_len);
    at += struct_len;
    free(attributes);
  }
  at = put_field(at, number, part_len);
  at = put_field(at, 1, map_len);
  for (size_t i = 0; i < n; i++) {
    size_t key_len = headers[i].key_length, value_len = headers[i].value_length;
    at = put_field(at, 1, field_size(key_len) + field_size(value_len));
    at = put_field(at, 1, key_len);
    memcpy(at, headers[i].key, key_len);
    at = put_field(at + key_len, 3, value_len);
    memcpy(at, headers[i].value, value_len);
    at += value_len;
  }
  if (!trailers && eos) {
    *at++ = (char)((3 << 3) | 0); /* end_of_stream: true */
    *at++ = 1;
  }
  ev->body_len = (size_t)(at - ev->bytes);
  ev->eos = eos;
  if (headers != stack_headers) {
    free(headers);
  }
  return ev;
}

static dm_body received_body(int d) {
  return d == REQUEST ? DM_RECEIVED_REQUEST_BODY : DM_RECEIVED_RESPONSE_BODY;
}
static dm_body buffered_body(int d) {
  return d == REQUEST ? DM_BUFFERED_REQUEST_BODY : DM_BUFFERED_RESPONSE_BODY;
}
static dm_header_map headers_map(int d) {
  return d == REQUEST ? DM_REQUEST_HEADERS : DM_RESPONSE_HEADERS;
}
static dm_header_map trailers_map(int d) {
  return d == REQUEST ? DM_REQUEST_TRAILERS : DM_RESPONSE_TRAILERS;
}

static size_t body_size(dm_filter_envoy filter, dm_body which) {
  return envoy_dynamic_module_callback_http_get_body_size(filter, which);
}

/* Copy a body's first ``limit`` bytes (at most) to ``at``; returns the end. */
static char *copy_body(dm_filter_envoy filter, dm_body which, char *at, size_t limit) {
  size_t n = envoy_dynamic_module_callback_http_get_body_chunks_size(filter, which);
  if (n == 0) {
    return at;
  }
  dm_envoy_buffer stack_chunks[16];
  dm_envoy_buffer *chunks = n <= 16 ? stack_chunks : must(malloc(n * sizeof(*chunks)));
  if (envoy_dynamic_module_callback_http_get_body_chunks(filter, which, chunks)) {
    for (size_t i = 0; i < n && limit > 0; i++) {
      size_t length = chunks[i].length < limit ? chunks[i].length : limit;
      memcpy(at, chunks[i].ptr, length);
      at += length;
      limit -= length;
    }
  }
  if (chunks != stack_chunks) {
    free(chunks);
  }
  return at;
}

/* In a body callback: what it received is this filter's buffer itself (handed back by
 * Envoy after the filter stopped), not more of the body. */
static int redelivered(dm_filter_envoy filter, int d) {
  return d == REQUEST ? envoy_dynamic_module_callback_http_received_buffered_request_body(filter)
                      : envoy_dynamic_module_callback_http_received_buffered_response_body(filter);
}

/* A body event: what Envoy buffered for this filter, then (in a body callback) what it just
 * received. */
static event *body_event(dm_filter_envoy filter, stream *s, int d, int buffered, int received,
                         int eos) {
  if (buffered && received && redelivered(filter, d)) {
    received = 0;
  }
  size_t from_buffer = buffered ? body_size(filter, buffered_body(d)) : 0;
  size_t from_received = received ? body_size(filter, received_body(d)) : 0;
  size_t total = from_buffer + from_received;
  event *ev = new_event(s, d == REQUEST ? EV_REQUEST_BODY : EV_RESPONSE_BODY, total);
  char *at = ev->bytes;
  if (buffered) {
    at = copy_body(filter, buffered_body(d), at, from_buffer);
  }
  if (received) {
    at = copy_body(filter, received_body(d), at, from_received);
  }
  ev->body_len = (size_t)(at - ev->bytes);
  ev->eos = eos;
  return ev;
}

/* STREAMED / FULL_DUPLEX_STREAMED: hand Python the next piece: what Envoy holds for this
 * filter after the answered bytes at its front and (in a body callback) what it just
 * received, taken out of Envoy's buffer and kept here (``inflight``) until answered. */
static void send_piece(dm_filter_envoy filter, stream *s, int d, int received, int eos);

/* Envoy's buffer for this filter becomes its first ``at`` bytes, ``data``, and what followed
 * the ``drop`` bytes after them (it takes appends and drains at its front only: what stays
 * is copied out and back). */
static void splice(dm_filter_envoy filter, int d, size_t at, size_t drop, const char *data,
                   size_t len) {
  dm_body which = buffered_body(d);
  size_t size = body_size(filter, which);
  at = at < size ? at : size;
  drop = drop < size - at ? drop : size - at;
  if (at == size) { /* nothing to keep after it: an append */
    if (len > 0) {
      envoy_dynamic_module_callback_http_append_body(filter, which, (dm_module_buffer){data, len});
    }
    return;
  }
  char *all = must(malloc(size));
  copy_body(filter, which, all, size);
  envoy_dynamic_module_callback_http_drain_body(filter, which, size);
  const dm_module_buffer parts[3] = {{all, at}, {data, len}, {all + at + drop, size - at - drop}};
  for (int i = 0; i < 3; i++) {
    if (parts[i].length > 0) {
      envoy_dynamic_module_callback_http_append_body(filter, which, parts[i]);
    }
  }
  free(all);
}

static void send_event(dm_filter_envoy filter, stream *s, event *ev);

static void send_piece(dm_filter_envoy filter, stream *s, int d, int received, int eos) {
  direction *x = &s->dir[d];
  dm_body buffered = buffered_body(d);
  size_t total = body_size(filter, buffered), front = x->front < total ? x->front : total;
  if (received && redelivered(filter, d)) {
    received = 0;
  }
  size_t came = received ? body_size(filter, received_body(d)) : 0;
  char *all = must(malloc(total + came + 1));
  copy_body(filter, buffered, all, total);
  if (received) {
    copy_body(filter, received_body(d), all + total, came);
    envoy_dynamic_module_callback_http_drain_body(filter, received_body(d), came);
  }
  /* Envoy keeps the answered bytes at its buffer's front; the rest is the piece */
  envoy_dynamic_module_callback_http_drain_body(filter, buffered, total);
  if (front > 0) {
    envoy_dynamic_module_callback_http_append_body(filter, buffered,
                                                   (dm_module_buffer){all, front});
  }
  size_t len = total + came - front;
  event *ev = new_event(s, d == REQUEST ? EV_REQUEST_BODY : EV_RESPONSE_BODY, len);
  memcpy(ev->bytes, all + front, len);
  ev->body_len = len;
  ev->eos = eos;
  free(x->inflight);
  x->inflight = must(malloc(len + 1));
  memcpy(x->inflight, all + front, len);
  x->inflight_len = len;
  free(all);
  send_event(filter, s, ev);
}

/* Put answered bytes after those already at the front of Envoy's buffer (before what Python
 * has not seen, if anything). */
static void put_answered(dm_filter_envoy filter, stream *s, int d, const char *data,
                         size_t len) {
  direction *x = &s->dir[d];
  size_t total = body_size(filter, buffered_body(d));
  size_t front = x->front < total ? x->front : total;
  splice(filter, d, front, 0, data, len);
  x->front = front + len;
}

/* -- the message timeout, kept here ----------------------------------------------------------
 * A phase Python has not answered within the message timeout is answered from C, as Envoy's
 * ext_proc filter answers a message timeout (504; or, failing open, the stream goes on and
 * gets no more phases), even when Python's loop is blocked by a hook that never yields: one
 * watchdog thread keeps the deadline of every waiting phase (at most one per direction of a
 * stream: a direction's phases come one after another) in a list it leaves as soon as the
 * phase is answered, and commits the answer through the stream's scheduler. Python's late
 * answer then finds the phase no longer waiting and is dropped, and a phase still queued for
 * Python is not handed to it. */

static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond;
static watch_node *watching; /* waiting phases, newest first (under watch_lock) */
static atomic_int watchdog_started;

static int before(const struct timespec *a, const struct timespec *b) {
  return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void commit_locked(stream *s, answer *a) {
  int kind = a->kind;
  free_answer(&s->pending[kind]);
  s->pending[kind] = *a;
  memset(a, 0, sizeof(*a));
  envoy_dynamic_module_callback_http_filter_scheduler_commit(s->scheduler, (uint64_t)kind);
}

/* Take a direction's listing off the watchdog's list when it is phase ``seq``'s (any: 0);
 * under watch_lock. Returns whether it did (the caller drops the list's reference). */
static int delist(watch_node *node, uint64_t seq) {
  if (!node->listed || (seq != 0 && node->seq != seq)) {
    return 0;
  }
  if (node->prev != NULL) {
    node->prev->next = node->next;
  } else {
    watching = node->next;
  }
  if (node->next != NULL) {
    node->next->prev = node->prev;
  }
  node->prev = node->next = NULL;
  node->listed = 0;
  return 1;
}

static void unwatch(stream *s, int d) {
  pthread_mutex_lock(&watch_lock);
  int removed = delist(&s->dir[d].watch, 0);
  pthread_mutex_unlock(&watch_lock);
  if (removed) {
    unref(s);
  }
}

/* Phase ``seq`` of direction ``d`` is due: answered as Envoy's ext_proc answers a message
 * timeout, unless it was answered meanwhile (then a later phase's listing is not touched). */
static void time_out(stream *s, int d, uint64_t seq) {
  static const char details[] = "extproc_message_timeout";
  pthread_mutex_lock(&s->lock);
  int kind = s->dir[d].waiting;
  if (kind != 0 && s->dir[d].seq == seq && s->alive && s->scheduler != NULL) {
    s->dir[d].waiting = 0;
    answer a = {0};
    a.kind = kind;
    a.timed_out = 1;
    if (s->config->fail_open) {
      s->abandoned = 1; /* as Envoy's ext_proc: no more phases for this stream */
      a.abandon = 1;
    } else {
      a.reply = 1;
      a.status = 504;
      a.details = must(strdup(details));
      a.details_len = sizeof(details) - 1;
    }
    commit_locked(s, &a);
  }
  pthread_mutex_lock(&watch_lock);
  int removed = delist(&s->dir[d].watch, seq);
  pthread_mutex_unlock(&watch_lock);
  pthread_mutex_unlock(&s->lock);
  if (removed) {
    unref(s);
  }
}

static void *watchdog(void *unused) {
  (void)unused;
  pthread_mutex_lock(&watch_lock);
  for (;;) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    watch_node *due = NULL, *earliest = NULL;
    for (watch_node *node = watching; node != NULL; node = node->next) {
      if (!before(&now, &node->deadline)) {
        due = node;
        break;
      }
      if (earliest == NULL || before(&node->deadline, &earliest->deadline)) {
        earliest = node;
      }
    }
    if (due != NULL) {
      stream *s = due->stream;
      int d = due->dir;
      uint64_t seq = due->seq;
      atomic_fetch_add(&s->refs, 1); /* kept across the unlock */
      pthread_mutex_unlock(&watch_lock);
      time_out(s, d, seq);
      unref(s);
      pthread_mutex_lock(&watch_lock);
      continue;
    }
    if (earliest == NULL) {
      pthread_cond_wait(&watch_cond, &watch_lock);
    } else {
      struct timespec at = earliest->deadline;
      pthread_cond_timedwait(&watch_cond, &watch_lock, &at);
    }
  }
  return NULL;
}

static void start_watchdog(void) {
  pthread_mutex_lock(&watch_lock);
  if (!atomic_load(&watchdog_started)) {
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&watch_cond, &attributes);
    pthread_condattr_destroy(&attributes);
    pthread_t thread;
    if (pthread_create(&thread, NULL, watchdog, NULL) == 0) {
      pthread_detach(thread);
      atomic_store(&watchdog_started, 1);
    } else {
      log_line(DM_LOG_ERROR, "extkit_dm: no watchdog thread: message timeouts are Python's "
                             "alone (a hook that blocks the loop holds requests)");
    }
  }
  pthread_mutex_unlock(&watch_lock);
}

/* List (or move) direction ``d``'s deadline: phase ``seq``'s answer is due in ``ms``. Under
 * the stream's lock, so that a listing never goes to a phase that is no longer waiting. */
static void watch_locked(stream *s, int d, uint64_t seq, long ms) {
  watch_node *node = &s->dir[d].watch;
  struct timespec at;
  clock_gettime(CLOCK_MONOTONIC, &at);
  at.tv_sec += ms / 1000;
  at.tv_nsec += (ms % 1000) * 1000000L;
  if (at.tv_nsec >= 1000000000L) {
    at.tv_sec += 1;
    at.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&watch_lock);
  node->deadline = at;
  node->seq = seq;
  if (!node->listed) {
    atomic_fetch_add(&s->refs, 1); /* the list's */
    node->stream = s;
    node->dir = d;
    node->listed = 1;
    node->prev = NULL;
    node->next = watching;
    if (watching != NULL) {
      watching->prev = node;
    }
    watching = node;
  }
  pthread_mutex_unlock(&watch_lock);
  pthread_cond_signal(&watch_cond); /* it may be earlier than what the watchdog waits for */
}

/* Hand a phase to Python; its direction waits for the answer (worker). */
static void send_event(dm_filter_envoy filter, stream *s, event *ev) {
  int d = direction_of(ev->kind);
  s->dir[d].phase = ev->kind;
  if (is_body(ev->kind) && ev->eos) {
    s->dir[d].eos_sent = 1;
  }
  atomic_fetch_add(&s->refs, 1); /* the event's: dropped when Python answers */
  pthread_mutex_lock(&s->lock);
  if (s->scheduler == NULL) {
    s->scheduler = envoy_dynamic_module_callback_http_filter_scheduler_new(filter);
  }
  s->python_holds = 1;
  s->dir[d].waiting = ev->kind;
  s->dir[d].seq++;
  if (atomic_load(&watchdog_started) && s->config->timeout_ms > 0) {
    watch_locked(s, d, s->dir[d].seq, s->config->timeout_ms);
  }
  pthread_mutex_unlock(&s->lock);
  enqueue(ev);
}

/* -- the Python module the bridge talks to (_extkit_dm) -------------------------------------- */

static PyObject *py_wake_fd(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  return PyLong_FromLong(wake_fd);
}

/* Every queued event as (stream, serial, kind, config, payload, end_of_stream): the payload is
 * the serialized ProcessingRequest for headers and trailers, the bytes of a body, None for
 * the end. */
static PyObject *py_take(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  uint64_t count;
  while (read(wake_fd, &count, sizeof(count)) < 0 && errno == EINTR) {
  }
  pthread_mutex_lock(&queue_lock);
  event *ev = queue_head;
  queue_head = queue_tail = NULL;
  pthread_mutex_unlock(&queue_lock);
  PyObject *list = PyList_New(0);
  while (ev != NULL) {
    event *next = ev->next;
    if (ev->kind != EV_END && !ev->observed) {
      /* A phase answered meanwhile (its message timeout passed) or of a stream Envoy ended
       * is not handed to Python: its hook would run for a request that is over. */
      stream *s = ev->stream;
      pthread_mutex_lock(&s->lock);
      int stale = !s->alive || s->dir[direction_of(ev->kind)].waiting != ev->kind;
      pthread_mutex_unlock(&s->lock);
      if (stale) {
        unref(s); /* the event's */
        free(ev);
        ev = next;
        continue;
      }
    }
    PyObject *payload;
    if (ev->kind == EV_END) {
      payload = Py_None;
      Py_INCREF(Py_None);
    } else {
      payload = PyBytes_FromStringAndSize(ev->bytes, (Py_ssize_t)ev->body_len);
    }
    PyObject *item = payload == NULL ? NULL
                     : Py_BuildValue("(KKilNO)", (unsigned long long)(uintptr_t)ev->stream,
                                     (unsigned long long)ev->stream->serial, ev->kind,
                                     ev->config_id, payload, ev->eos ? Py_True : Py_False);
    if (item == NULL) {
      /* out of memory: the phase is not handed over (the watchdog answers it) */
      PyErr_Clear();
      if (ev->kind != EV_END && !ev->observed) {
        ev->observed = 1; /* so its reference goes below */
      }
    } else {
      PyList_Append(list, item);
      Py_DECREF(item);
    }
    if (ev->kind == EV_END || ev->observed) {
      unref(ev->stream); /* nothing answers these */
    }
    free(ev);
    ev = next;
  }
  return list;
}

static char *copy_bytes(PyObject *value, size_t *length) {
  char *data;
  Py_ssize_t size;
  if (PyBytes_AsStringAndSize(value, &data, &size) < 0) {
    return NULL;
  }
  char *copy = must(malloc((size_t)size + 1));
  memcpy(copy, data, (size_t)size);
  copy[size] = 0;
  *length = (size_t)size;
  return copy;
}

/* ops: a list of (op, name: bytes, value: bytes | None). */
static int parse_ops(PyObject *list, answer *a) {
  if (list == Py_None) {
    return 0;
  }
  if (!PyList_Check(list)) {
    PyErr_SetString(PyExc_TypeError, "header operations are a list");
    return -1;
  }
  Py_ssize_t n = PyList_GET_SIZE(list);
  a->ops = must(calloc((size_t)n + 1, sizeof(header_op)));
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *item = PyList_GET_ITEM(list, i);
    PyObject *name, *value;
    int op;
    if (!PyArg_ParseTuple(item, "iSO", &op, &name, &value)) {
      return -1;
    }
    header_op *out = &a->ops[a->n_ops++];
    out->op = op;
    out->name = copy_bytes(name, &out->name_len);
    if (value != Py_None) {
      out->value = copy_bytes(value, &out->value_len);
    }
    if (out->name == NULL || (value != Py_None && out->value == NULL)) {
      return -1;
    }
  }
  return 0;
}

/* Store the answer on the stream and have its worker apply it; drops the event's reference. */
static void deliver(stream *s, answer *a, int done) {
  int kind = a->kind, d = direction_of(kind);
  pthread_mutex_lock(&s->lock);
  /* A phase the watchdog answered (its message timeout passed) is no longer waiting. */
  int delisted = 0, other = 1 - d;
  int reply = a->reply;
  if (s->alive && s->scheduler != NULL && s->dir[d].waiting == kind) {
    s->dir[d].waiting = 0;
    /* off the watchdog's list before the worker can send the next phase */
    pthread_mutex_lock(&watch_lock);
    delisted = delist(&s->dir[d].watch, 0);
    pthread_mutex_unlock(&watch_lock);
    if (a->abandon) {
      s->abandoned = 1;
    }
    commit_locked(s, a);
  }
  if (reply && s->dir[other].waiting) {
    /* the stream is answered: the other direction's phase is over too (not handed to
     * Python if still queued; its answer, if any, is dropped) */
    s->dir[other].waiting = 0;
    pthread_mutex_lock(&watch_lock);
    delisted += delist(&s->dir[other].watch, 0);
    pthread_mutex_unlock(&watch_lock);
  }
  if (done && (reply || s->dir[other].waiting == 0)) {
    s->python_holds = 0; /* (else the bridge gets the other phase, and END after it) */
  }
  pthread_mutex_unlock(&s->lock);
  free_answer(a); /* the stream was gone: nothing to apply */
  while (delisted-- > 0) {
    unref(s);
  }
  unref(s);
}

static int known_phase(int kind) {
  if (kind <= 0 || kind >= EV_KINDS || kind == EV_END) {
    PyErr_Format(PyExc_ValueError, "no phase %d", kind);
    return 0;
  }
  return 1;
}

/* metadata: None or a list of (namespace: bytes, serialized Struct: bytes). */
static int parse_meta(PyObject *list, answer *a) {
  if (list == Py_None) {
    return 0;
  }
  if (!PyList_Check(list)) {
    PyErr_SetString(PyExc_TypeError, "dynamic metadata is a list");
    return -1;
  }
  Py_ssize_t n = PyList_GET_SIZE(list);
  a->meta = must(calloc((size_t)n + 1, sizeof(meta_entry)));
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *ns, *data;
    if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "SS", &ns, &data)) {
      return -1;
    }
    meta_entry *out = &a->meta[a->n_meta++];
    out->ns = copy_bytes(ns, &out->ns_len);
    out->data = copy_bytes(data, &out->data_len);
  }
  return 0;
}

enum { FLAG_CLEAR_ROUTE = 1, FLAG_REPLACE = 2, FLAG_ABANDON = 4 };

/* answer(stream, kind, done, ops, body=None, flags=0, override=None, metadata=None): go on,
 * with these header (or trailer) changes; for a body phase these bytes (None: unchanged);
 * flags: Envoy picks the route again, the headers' answer replaces the body; override:
 * (request body mode, response body mode, phase bits) from now on; dynamic metadata. */
static PyObject *py_answer(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long handle;
  int kind, done;
  int flags = 0;
  PyObject *ops, *body = Py_None, *override = Py_None, *meta = Py_None;
  if (!PyArg_ParseTuple(args, "KipO|OiOO", &handle, &kind, &done, &ops, &body, &flags,
                        &override, &meta) ||
      !known_phase(kind)) {
    return NULL;
  }
  answer a = {0};
  a.kind = kind;
  a.clear_route = (flags & FLAG_CLEAR_ROUTE) && direction_of(kind) == REQUEST;
  a.replace = (flags & FLAG_REPLACE) && !is_body(kind) && !is_trailers(kind);
  a.abandon = (flags & FLAG_ABANDON) != 0; /* timed out, failing open (if C did not already) */
  if (override != Py_None) {
    if (!PyArg_ParseTuple(override, "iii", &a.override_body_mode[REQUEST],
                          &a.override_body_mode[RESPONSE], &a.override_hooks)) {
      return NULL;
    }
    a.override = 1;
  }
  if (parse_ops(ops, &a) < 0 || parse_meta(meta, &a) < 0) {
    free_answer(&a);
    return NULL; /* the bridge answers again without changes */
  }
  if (body != Py_None) {
    a.body = copy_bytes(body, &a.body_len);
    if (a.body == NULL) {
      free_answer(&a);
      return NULL;
    }
    a.has_body = 1;
  }
  deliver((stream *)(uintptr_t)handle, &a, done);
  Py_RETURN_NONE;
}

/* reply(stream, kind, status, headers: [(name, value)], body, details): a local reply. */
static PyObject *py_reply(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long handle;
  int kind;
  unsigned int status;
  PyObject *headers, *body, *details;
  if (!PyArg_ParseTuple(args, "KiIOSS", &handle, &kind, &status, &headers, &body, &details) ||
      !known_phase(kind)) {
    return NULL;
  }
  answer a = {0};
  a.kind = kind;
  a.reply = 1;
  a.status = status;
  a.body = copy_bytes(body, &a.body_len);
  a.details = copy_bytes(details, &a.details_len);
  if (headers != Py_None && !PyList_Check(headers)) {
    free_answer(&a);
    PyErr_SetString(PyExc_TypeError, "a reply's headers are a list");
    return NULL;
  }
  PyObject *ops = PyList_New(0);
  Py_ssize_t n = headers == Py_None ? 0 : PyList_GET_SIZE(headers);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *name, *value;
    if (!PyArg_ParseTuple(PyList_GET_ITEM(headers, i), "SS", &name, &value)) {
      Py_DECREF(ops);
      free_answer(&a);
      return NULL;
    }
    PyObject *op = Py_BuildValue("(iOO)", OP_SET, name, value);
    PyList_Append(ops, op);
    Py_DECREF(op);
  }
  int failed = parse_ops(ops, &a);
  Py_DECREF(ops);
  if (failed < 0) {
    free_answer(&a);
    return NULL;
  }
  deliver((stream *)(uintptr_t)handle, &a, 1);
  Py_RETURN_NONE;
}

/* extend(stream, kind, ms): the phase's answer may take ``ms`` from now (extend_timeout). */
static PyObject *py_extend(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long handle;
  int kind;
  long ms;
  if (!PyArg_ParseTuple(args, "Kil", &handle, &kind, &ms) || !known_phase(kind)) {
    return NULL;
  }
  stream *s = (stream *)(uintptr_t)handle; /* held: its event is not answered yet */
  int d = direction_of(kind);
  pthread_mutex_lock(&s->lock);
  if (s->alive && s->dir[d].waiting == kind && atomic_load(&watchdog_started)) {
    watch_locked(s, d, s->dir[d].seq, ms);
  }
  pthread_mutex_unlock(&s->lock);
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"wake_fd", py_wake_fd, METH_NOARGS, "The eventfd that is readable when events wait."},
    {"take", py_take, METH_NOARGS, "Clear the eventfd and take every waiting event."},
    {"answer", py_answer, METH_VARARGS, "Go on with header changes (and a body's bytes)."},
    {"reply", py_reply, METH_VARARGS, "Answer a stream with a local reply."},
    {"extend", py_extend, METH_VARARGS, "Give a waiting phase more time."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_extkit_dm", NULL, -1, methods,
                                        NULL, NULL, NULL, NULL};

static PyObject *init_module(void) { return PyModule_Create(&module_def); }

/* -- Python start-up (main thread, first filter config) --------------------------------------- */

static PyObject *bridge;

static int start_python(void) {
  wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd < 0) {
    log_line(DM_LOG_ERROR, "extkit_dm: eventfd failed");
    return -1;
  }
  PyImport_AppendInittab("_extkit_dm", init_module);
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0; /* Envoy's signals stay Envoy's */
  config.parse_argv = 0;
  const char *python = getenv("EXTKIT_DM_PYTHON");
  /* The venv's python as program name: Python finds pyvenv.cfg next to it, hence the venv's
   * site-packages (extproc, its editable install, uvloop). */
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name,
                                            python ? python : DEFAULT_PYTHON);
  if (!PyStatus_Exception(status)) {
    status = Py_InitializeFromConfig(&config);
  }
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    char line[512];
    snprintf(line, sizeof(line), "extkit_dm: Python did not start: %s",
             status.err_msg ? status.err_msg : "?");
    log_line(DM_LOG_ERROR, line);
    return -1;
  }
  bridge = PyImport_ImportModule("extproc.dynamic_module.bridge");
  if (bridge == NULL) {
    PyErr_Print();
    log_line(DM_LOG_ERROR,
             "extkit_dm: importing extproc.dynamic_module.bridge failed (traceback on stderr)");
    return -1;
  }
  python_ready = 1;
  PyEval_SaveThread(); /* the main thread lets go of the GIL for good */
  return 0;
}

/* -- hooks ----------------------------------------------------------------------------------- */

EXPORT const char *envoy_dynamic_module_on_program_init(void) {
  /* Envoy dlopens this module RTLD_LOCAL, and libpython with it: extension modules Python
   * loads later (_asyncio, upb's _message, uvloop) resolve libpython's symbols globally. */
  if (dlopen(LIBPYTHON, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL) == NULL) {
    log_line(DM_LOG_ERROR, "extkit_dm: could not make " LIBPYTHON " global");
    return NULL;
  }
  return DM_ABI_VERSION;
}

EXPORT dm_config_module envoy_dynamic_module_on_http_filter_config_new(dm_config_envoy envoy_config,
                                                                       dm_envoy_buffer name,
                                                                       dm_envoy_buffer config) {
  (void)name;
  if (!python_ready && start_python() < 0) {
    return NULL;
  }
  PyGILState_STATE gil = PyGILState_Ensure();
  filter_config *result = NULL;
  PyObject *got = PyObject_CallMethod(bridge, "configure", "s#", config.ptr,
                                      (Py_ssize_t)config.length);
  long id, timeout_ms;
  int hooks, fail_open, request_body, response_body, observe;
  PyObject *attributes[2];
  if (got == NULL || !PyArg_ParseTuple(got, "lilpiipOO", &id, &hooks, &timeout_ms, &fail_open,
                                       &request_body, &response_body, &observe,
                                       &attributes[REQUEST], &attributes[RESPONSE]) ||
      !PyList_Check(attributes[REQUEST]) || !PyList_Check(attributes[RESPONSE])) {
    PyErr_Print();
    log_line(DM_LOG_ERROR, "extkit_dm: the filter config was refused (reason on stderr)");
  } else {
    result = must(malloc(sizeof(*result)));
    result->id = id;
    result->hooks = hooks;
    result->body_mode[REQUEST] = request_body;
    result->body_mode[RESPONSE] = response_body;
    result->timeout_ms = timeout_ms;
    result->fail_open = fail_open;
    result->observe = observe;
    for (int d = REQUEST; d <= RESPONSE; d++) {
      Py_ssize_t n = PyList_GET_SIZE(attributes[d]);
      result->attributes[d] = must(calloc((size_t)n + 1, sizeof(attribute)));
      result->n_attributes[d] = 0;
      for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name;
        attribute *a = &result->attributes[d][result->n_attributes[d]];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(attributes[d], i), "Sii", &name, &a->id,
                              &a->kind)) {
          PyErr_Print();
          continue;
        }
        a->name = copy_bytes(name, &a->name_len);
        result->n_attributes[d]++;
      }
    }
  }
  Py_XDECREF(got);
  PyGILState_Release(gil);
  if (result != NULL) {
    for (int i = 0; i < 4; i++) {
      size_t id = 0;
      dm_module_buffer counter = {counter_names[i], strlen(counter_names[i])};
      if (envoy_dynamic_module_callback_http_filter_config_define_counter(envoy_config, counter,
                                                                         NULL, 0, &id) == 0) {
        result->counters[i] = id;
      }
    }
    start_watchdog();
  }
  return result;
}

EXPORT void envoy_dynamic_module_on_http_filter_config_destroy(dm_config_module config) {
  /* Streams of this config may still wait for Python; the config stays (a few bytes). The
   * class's on_shutdown runs once no config of it is left. */
  const filter_config *c = config;
  PyGILState_STATE gil = PyGILState_Ensure();
  PyObject *done = PyObject_CallMethod(bridge, "release", "l", c->id);
  if (done == NULL) {
    PyErr_Print();
  }
  Py_XDECREF(done);
  PyGILState_Release(gil);
}

EXPORT dm_filter_module envoy_dynamic_module_on_http_filter_new(dm_config_module config,
                                                                dm_filter_envoy filter) {
  count(filter, config, COUNT_STREAMS);
  static atomic_uint_fast64_t streams;
  stream *s = must(calloc(1, sizeof(stream)));
  atomic_init(&s->refs, 1);
  s->serial = atomic_fetch_add(&streams, 1) + 1;
  pthread_mutex_init(&s->lock, NULL);
  const filter_config *c = config;
  s->config = c;
  s->hooks = c->hooks;
  s->body_mode[REQUEST] = c->body_mode[REQUEST];
  s->body_mode[RESPONSE] = c->body_mode[RESPONSE];
  s->alive = 1;
  return s;
}

/* Envoy 1.40's module filter ignores a continue until a callback of that direction returned
 * a Stop status since the last one; the module keeps the same flag so that it never loses
 * one. Returns whether the direction was continued. */
static int continue_direction(dm_filter_envoy filter, stream *s, int d) {
  direction *x = &s->dir[d];
  if (x->continued) {
    return 0;
  }
  if (d == REQUEST) {
    envoy_dynamic_module_callback_http_filter_continue_decoding(filter);
  } else {
    envoy_dynamic_module_callback_http_filter_continue_encoding(filter);
  }
  x->continued = 1;
  return 1;
}

/* Go on with what Envoy holds (answered bytes only: nothing Python has not seen waits when a
 * direction goes on). A piece with Python keeps its direction stopped, so that its answer's
 * continue is never one Envoy ignores. */
static void pass_on(dm_filter_envoy filter, stream *s, int d) {
  if (!continue_direction(filter, s, d)) {
    log_line(DM_LOG_ERROR, "extkit_dm: a continue Envoy would ignore was not sent");
  }
  s->dir[d].front = 0;
}

static event *trailers_event(dm_filter_envoy filter, stream *s, int d) {
  return headers_event(filter, s, trailers_map(d),
                       d == REQUEST ? EV_REQUEST_TRAILERS : EV_RESPONSE_TRAILERS, 0);
}

static int holds_headers(int mode) { return mode == BM_BUFFERED || mode == BM_PARTIAL; }

static int trailers_hook(stream *s, int d) {
  return s->hooks & (d == REQUEST ? HOOK_REQUEST_TRAILERS : HOOK_RESPONSE_TRAILERS);
}

/* Envoy's ext_proc cannot know the length the processor leaves: it drops content-length for
 * a body sent in pieces, and for a BUFFERED body whose headers it does not send (the body's
 * answer can then not fix the length). */
static void drop_length(dm_filter_envoy filter, stream *s, int d, int hook) {
  int mode = s->body_mode[d];
  if (mode == BM_STREAMED || mode == BM_PARTIAL || mode == BM_DUPLEX ||
      (mode == BM_BUFFERED && !hook)) {
    static const char name[] = "content-length";
    envoy_dynamic_module_callback_http_set_header(
        filter, headers_map(d), (dm_module_buffer){name, sizeof(name) - 1},
        (dm_module_buffer){NULL, 0});
  }
}

/* The body (if any) and its answer are done: the trailers' phase, or on. Worker, outside
 * Envoy's callbacks for this direction. */
static void after_body(dm_filter_envoy filter, stream *s, int d) {
  direction *x = &s->dir[d];
  if (x->trailers) {
    /* (trailers end a FULL_DUPLEX_STREAMED body: their answer carries what the hook held
     * back) */
    if (trailers_hook(s, d)) {
      send_event(filter, s, trailers_event(filter, s, d));
      return;
    }
  }
  pass_on(filter, s, d);
}

/* BUFFERED / BUFFERED_PARTIAL with the headers held: the body is complete (or fills the
 * buffer), and the headers are answered: the body goes to Python, or, with none, on. */
static void held_body_ready(dm_filter_envoy filter, stream *s, int d) {
  direction *x = &s->dir[d];
  if (!x->body_started) {
    after_body(filter, s, d);
    return;
  }
  x->body_sent = 1;
  event *ev = body_event(filter, s, d, 1, 0, x->eos && !x->trailers);
  x->sent_len = ev->body_len;
  send_event(filter, s, ev);
}

static int buffer_full(dm_filter_envoy filter, int d, size_t size) {
  uint64_t limit = envoy_dynamic_module_callback_http_get_buffer_limit(filter);
  (void)d;
  return limit > 0 && size >= limit;
}

/* Observability mode: the phase goes to Python and the stream goes on at once. */
static void observe(stream *s, event *ev) {
  ev->observed = 1;
  atomic_fetch_add(&s->refs, 1); /* the event's: dropped once handed to Python */
  pthread_mutex_lock(&s->lock);
  s->python_holds = 1; /* the bridge keeps the stream until Envoy ends it */
  pthread_mutex_unlock(&s->lock);
  enqueue(ev);
}

static int on_headers(dm_filter_envoy filter, stream *s, int d, bool end_of_stream) {
  direction *x = &s->dir[d];
  if (s->local_replied || abandoned(s)) {
    return DM_HEADERS_CONTINUE;
  }
  if (s->config->observe) {
    if (s->hooks & (d == REQUEST ? HOOK_REQUEST_HEADERS : HOOK_RESPONSE_HEADERS)) {
      observe(s, headers_event(filter, s, headers_map(d),
                               d == REQUEST ? EV_REQUEST_HEADERS : EV_RESPONSE_HEADERS,
                               end_of_stream));
    }
    return DM_HEADERS_CONTINUE;
  }
  int mode = s->body_mode[d];
  int hook = s->hooks & (d == REQUEST ? HOOK_REQUEST_HEADERS : HOOK_RESPONSE_HEADERS);
  x->eos = x->headers_eos = end_of_stream;
  x->held = !end_of_stream && holds_headers(mode);
  if (!hook) {
    drop_length(filter, s, d, 0);
    return x->held ? DM_HEADERS_STOP : DM_HEADERS_CONTINUE;
  }
  send_event(filter, s,
             headers_event(filter, s, headers_map(d),
                           d == REQUEST ? EV_REQUEST_HEADERS : EV_RESPONSE_HEADERS,
                           end_of_stream));
  /* Stopped, not StopAll: body and trailer callbacks still come while the hook runs (and
   * wait here), so Envoy never hands them back to this filter inside its own continue (where
   * Envoy 1.40's module filter drops the next continue). */
  return DM_HEADERS_STOP;
}

static int on_body(dm_filter_envoy filter, stream *s, int d, bool end_of_stream) {
  direction *x = &s->dir[d];
  int mode = s->body_mode[d];
  if (s->local_replied) {
    return DM_BODY_CONTINUE;
  }
  if (abandoned(s)) {
    /* no more phases; what comes waits only behind a piece Python still has */
    return x->phase ? DM_BODY_STOP_AND_WATERMARK : DM_BODY_CONTINUE;
  }
  if (s->config->observe) {
    if (mode != BM_NONE) {
      observe(s, body_event(filter, s, d, 0, 1, end_of_stream));
    }
    return DM_BODY_CONTINUE;
  }
  if (x->replaced) {
    /* the headers' answer replaced this body: what comes is dropped */
    envoy_dynamic_module_callback_http_drain_body(filter, received_body(d),
                                                  body_size(filter, received_body(d)));
    return DM_BODY_CONTINUE;
  }
  int waiting = x->phase;
  if (mode == BM_NONE && !waiting) {
    return DM_BODY_CONTINUE; /* no body phase */
  }
  x->body_started = 1;
  if (end_of_stream) {
    x->eos = 1;
  }
  if (mode == BM_NONE) {
    /* it waits (in Envoy's buffer) for the headers' answer, which may ask for it */
    return DM_BODY_STOP_AND_WATERMARK;
  }
  if (holds_headers(mode)) {
    int hold = mode == BM_BUFFERED ? DM_BODY_STOP_AND_BUFFER : DM_BODY_STOP_AND_WATERMARK;
    if (x->body_sent) {
      /* BUFFERED_PARTIAL: the rest after the part Python has goes on unprocessed */
      return x->body_done ? DM_BODY_CONTINUE : DM_BODY_STOP_AND_WATERMARK;
    }
    if (waiting) {
      return hold; /* the headers' answer sends the body, once it is all here */
    }
    size_t size = body_size(filter, buffered_body(d)) + body_size(filter, received_body(d));
    if (end_of_stream || (mode == BM_PARTIAL && buffer_full(filter, d, size))) {
      x->body_sent = 1;
      event *ev = body_event(filter, s, d, 1, 1, end_of_stream);
      x->sent_len = ev->body_len;
      send_event(filter, s, ev);
    }
    return hold;
  }
  /* STREAMED / FULL_DUPLEX_STREAMED: while Python has a piece, what comes stays in Envoy's
   * buffer (under its flow control) and goes to Python as the next one. */
  if (!waiting) {
    /* (at the end of the stream Envoy has already moved the chunk into its buffer) */
    send_piece(filter, s, d, 1, end_of_stream);
  }
  return DM_BODY_STOP_AND_WATERMARK;
}

static int on_trailers(dm_filter_envoy filter, stream *s, int d) {
  direction *x = &s->dir[d];
  if (s->local_replied) {
    return DM_TRAILERS_CONTINUE;
  }
  if (abandoned(s)) {
    return x->phase ? DM_TRAILERS_STOP : DM_TRAILERS_CONTINUE;
  }
  int mode = s->body_mode[d];
  if (s->config->observe) {
    if (trailers_hook(s, d)) {
      observe(s, trailers_event(filter, s, d));
    }
    return DM_TRAILERS_CONTINUE;
  }
  if (x->replaced) {
    return DM_TRAILERS_CONTINUE;
  }
  x->eos = 1;
  x->trailers = 1;
  if (x->phase) {
    return DM_TRAILERS_STOP; /* the answer in flight goes on to them */
  }
  if (holds_headers(mode) && x->body_started && !x->body_sent) {
    x->body_sent = 1;
    event *ev = body_event(filter, s, d, 1, 0, 0);
    x->sent_len = ev->body_len;
    send_event(filter, s, ev);
    return DM_TRAILERS_STOP;
  }
  if (trailers_hook(s, d)) {
    send_event(filter, s, trailers_event(filter, s, d));
    return DM_TRAILERS_STOP;
  }
  return DM_TRAILERS_CONTINUE;
}

/* Each callback's status is what Envoy's continue flag for its direction follows. */
static int returned(stream *s, int d, int status) {
  s->dir[d].continued = status == 0; /* Continue is 0 in all three statuses */
  return status;
}

/* Envoy's entry points for each direction's headers, body and trailers (declared in abi.h). */
#define WITH_END_OF_STREAM(phase, d, run)                                                     \
  EXPORT int envoy_dynamic_module_on_http_filter_##phase(                                    \
      dm_filter_envoy filter, dm_filter_module module, bool end_of_stream) {                 \
    stream *s = (stream *)module;                                                            \
    return returned(s, d, run(filter, s, d, end_of_stream));                                 \
  }
#define TRAILERS(phase, d)                                                                    \
  EXPORT int envoy_dynamic_module_on_http_filter_##phase(dm_filter_envoy filter,             \
                                                         dm_filter_module module) {          \
    stream *s = (stream *)module;                                                            \
    return returned(s, d, on_trailers(filter, s, d));                                        \
  }
WITH_END_OF_STREAM(request_headers, REQUEST, on_headers)
WITH_END_OF_STREAM(response_headers, RESPONSE, on_headers)
WITH_END_OF_STREAM(request_body, REQUEST, on_body)
WITH_END_OF_STREAM(response_body, RESPONSE, on_body)
TRAILERS(request_trailers, REQUEST)
TRAILERS(response_trailers, RESPONSE)

static void apply_ops(dm_filter_envoy filter, dm_header_map map, const answer *a) {
  for (size_t i = 0; i < a->n_ops; i++) {
    const header_op *op = &a->ops[i];
    dm_module_buffer key = {op->name, op->name_len};
    dm_module_buffer value = {op->value, op->value_len};
    if (op->op == OP_ADD) {
      envoy_dynamic_module_callback_http_add_header(filter, map, key, value);
    } else {
      envoy_dynamic_module_callback_http_set_header(filter, map, key, value); /* NULL: remove */
    }
  }
}

static void send_reply(dm_filter_envoy filter, stream *s, const answer *a) {
  dm_module_header stack_headers[16];
  dm_module_header *headers =
      a->n_ops <= 16 ? stack_headers : must(malloc(a->n_ops * sizeof(dm_module_header)));
  for (size_t i = 0; i < a->n_ops; i++) {
    headers[i] = (dm_module_header){a->ops[i].name, a->ops[i].name_len, a->ops[i].value,
                                    a->ops[i].value_len};
  }
  s->local_replied = 1;
  envoy_dynamic_module_callback_http_send_response(
      filter, a->status, headers, a->n_ops, (dm_module_buffer){a->body, a->body_len},
      (dm_module_buffer){a->details, a->details_len});
  if (headers != stack_headers) {
    free(headers);
  }
}

/* Failing open on a message timeout: what this direction holds goes on as it is (the
 * answered bytes first), and no more phases come. */
static void let_through(dm_filter_envoy filter, stream *s, int d) {
  direction *x = &s->dir[d];
  if (x->inflight != NULL) {
    put_answered(filter, s, d, x->inflight, x->inflight_len); /* the piece as it came */
    free(x->inflight);
    x->inflight = NULL;
    x->inflight_len = 0;
  }
  pass_on(filter, s, d);
}

static void body_answered(dm_filter_envoy filter, stream *s, int d, answer *a) {
  direction *x = &s->dir[d];
  int mode = s->body_mode[d];
  if (holds_headers(mode)) {
    if (x->held) {
      apply_ops(filter, headers_map(d), a); /* the headers still wait here */
    }
    if (a->clear_route) {
      envoy_dynamic_module_callback_http_clear_route_cache(filter);
    }
    if (a->has_body) {
      splice(filter, d, 0, x->sent_len, a->body, a->body_len);
    }
    x->body_done = 1;
    after_body(filter, s, d);
    return;
  }
  /* STREAMED / FULL_DUPLEX_STREAMED: the answer joins the answered bytes at the front of
   * Envoy's buffer (all of them count against its limit, under its flow control) */
  if (a->has_body) {
    put_answered(filter, s, d, a->body, a->body_len);
  } else if (x->inflight != NULL) {
    put_answered(filter, s, d, x->inflight, x->inflight_len); /* unchanged */
  }
  free(x->inflight);
  x->inflight = NULL;
  x->inflight_len = 0;
  if (body_size(filter, buffered_body(d)) > x->front ||
      (x->eos && !x->trailers && !x->eos_sent)) {
    /* what arrived meanwhile (or the end of the stream, alone), as the next piece; the
     * direction stays stopped until Python has answered everything that came */
    send_piece(filter, s, d, 0, x->eos && !x->trailers);
    return;
  }
  if (x->eos) {
    after_body(filter, s, d);
  } else {
    pass_on(filter, s, d);
  }
}

static void headers_answered(dm_filter_envoy filter, stream *s, int d, answer *a) {
  direction *x = &s->dir[d];
  apply_ops(filter, headers_map(d), a);
  if (a->override) {
    for (int e = REQUEST; e <= RESPONSE; e++) {
      /* (a body already under way keeps its mode) */
      if (e == d || (!s->dir[e].body_started && !s->dir[e].phase)) {
        s->body_mode[e] = a->override_body_mode[e];
      }
    }
    s->hooks = a->override_hooks;
    x->held = !x->headers_eos && holds_headers(s->body_mode[d]);
  }
  if (a->clear_route) {
    envoy_dynamic_module_callback_http_clear_route_cache(filter);
  }
  if (a->replace) {
    /* CONTINUE_AND_REPLACE: this body is the answer's; Envoy's own body, and its
     * content-length, are dropped, and no body or trailer phase of this direction follows */
    static const char name[] = "content-length";
    envoy_dynamic_module_callback_http_set_header(
        filter, headers_map(d), (dm_module_buffer){name, sizeof(name) - 1},
        (dm_module_buffer){NULL, 0});
    x->replaced = 1;
    splice(filter, d, 0, body_size(filter, buffered_body(d)), a->body, a->body_len);
    continue_direction(filter, s, d);
    return;
  }
  drop_length(filter, s, d, 1);
  int mode = s->body_mode[d];
  if (!x->held && (mode == BM_STREAMED || mode == BM_DUPLEX) && x->body_started) {
    /* what arrived while the hook ran, as the first piece: the headers go on with its
     * answer */
    send_piece(filter, s, d, 0, x->eos && !x->trailers);
  } else if (!x->held && x->trailers) {
    after_body(filter, s, d);
  } else if (!x->held) {
    continue_direction(filter, s, d);
  } else if (x->eos || (mode == BM_PARTIAL &&
                        buffer_full(filter, d, body_size(filter, buffered_body(d))))) {
    held_body_ready(filter, s, d);
  } /* else body callbacks go on buffering; the last one sends the body */
}

EXPORT void envoy_dynamic_module_on_http_filter_scheduled(dm_filter_envoy filter,
                                                          dm_filter_module module,
                                                          uint64_t event_id) {
  stream *s = (stream *)module;
  if (event_id == 0 || event_id >= EV_KINDS) {
    return;
  }
  pthread_mutex_lock(&s->lock);
  answer a = s->pending[event_id];
  memset(&s->pending[event_id], 0, sizeof(a));
  pthread_mutex_unlock(&s->lock);
  if (a.kind == 0 || s->local_replied) {
    free_answer(&a);
    return;
  }
  int d = direction_of(a.kind);
  direction *x = &s->dir[d];
  x->phase = 0; /* applied now: what comes next may be sent */
  for (size_t i = 0; i < a.n_meta; i++) {
    /* merged into the namespace, as Envoy's ext_proc filter sets it */
    envoy_dynamic_module_callback_http_set_dynamic_metadata_struct(
        filter, (dm_module_buffer){a.meta[i].ns, a.meta[i].ns_len},
        (dm_module_buffer){a.meta[i].data, a.meta[i].data_len});
  }
  if (a.reply) {
    count(filter, s->config, a.timed_out ? COUNT_TIMEOUTS : COUNT_IMMEDIATE);
    send_reply(filter, s, &a);
  } else if (!a.abandon && abandoned(s)) {
    /* the other direction timed out failing open: no more processing, this answer's changes
     * included; what this direction holds goes on as it came */
    let_through(filter, s, d);
  } else if (a.abandon) {
    count(filter, s->config, COUNT_TIMEOUTS);
    count(filter, s->config, COUNT_FAILED_OPEN);
    let_through(filter, s, d);
  } else if (is_body(a.kind)) {
    body_answered(filter, s, d, &a);
  } else if (is_trailers(a.kind)) {
    if (a.has_body) {
      put_answered(filter, s, d, a.body, a.body_len); /* what a FULL_DUPLEX hook held back */
    }
    apply_ops(filter, trailers_map(d), &a);
    pass_on(filter, s, d);
  } else {
    headers_answered(filter, s, d, &a);
  }
  free_answer(&a);
}

EXPORT void envoy_dynamic_module_on_http_filter_destroy(dm_filter_module module) {
  stream *s = (stream *)module;
  pthread_mutex_lock(&s->lock);
  s->alive = 0;
  dm_scheduler scheduler = s->scheduler;
  s->scheduler = NULL;
  int holds = s->python_holds;
  s->python_holds = 0;
  for (int k = 0; k < EV_KINDS; k++) {
    free_answer(&s->pending[k]);
  }
  pthread_mutex_unlock(&s->lock);
  if (scheduler != NULL) {
    envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler);
  }
  unwatch(s, REQUEST);
  unwatch(s, RESPONSE);
  if (holds) {
    /* The bridge still keeps this stream's Processor (a later phase never came): drop it. */
    event *ev = must(calloc(1, sizeof(event)));
    ev->stream = s;
    ev->kind = EV_END;
    ev->config_id = s->config->id;
    atomic_fetch_add(&s->refs, 1);
    enqueue(ev);
  }
  unref(s);
}

EXPORT void envoy_dynamic_module_on_http_filter_stream_complete(dm_filter_envoy f,
                                                                dm_filter_module m) {
  (void)f, (void)m;
}

/* Required by Envoy's loader; this module starts no callouts or streams of its own. */
EXPORT void envoy_dynamic_module_on_http_filter_http_callout_done(
    dm_filter_envoy f, dm_filter_module m, uint64_t id, int result, dm_envoy_header *headers,
    size_t headers_size, dm_envoy_buffer *body_chunks, size_t body_chunks_size) {
  (void)f, (void)m, (void)id, (void)result, (void)headers, (void)headers_size;
  (void)body_chunks, (void)body_chunks_size;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_headers(
    dm_filter_envoy f, dm_filter_module m, uint64_t id, dm_envoy_header *headers,
    size_t headers_size, bool end_stream) {
  (void)f, (void)m, (void)id, (void)headers, (void)headers_size, (void)end_stream;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_data(dm_filter_envoy f,
                                                                 dm_filter_module m, uint64_t id,
                                                                 const dm_envoy_buffer *data,
                                                                 size_t count, bool end_stream) {
  (void)f, (void)m, (void)id, (void)data, (void)count, (void)end_stream;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_trailers(
    dm_filter_envoy f, dm_filter_module m, uint64_t id, dm_envoy_header *trailers, size_t size) {
  (void)f, (void)m, (void)id, (void)trailers, (void)size;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_complete(dm_filter_envoy f,
                                                                     dm_filter_module m,
                                                                     uint64_t id) {
  (void)f, (void)m, (void)id;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_reset(dm_filter_envoy f,
                                                                  dm_filter_module m, uint64_t id,
                                                                  int reason) {
  (void)f, (void)m, (void)id, (void)reason;
}
EXPORT void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    dm_filter_envoy f, dm_filter_module m) {
  (void)f, (void)m;
}
EXPORT void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    dm_filter_envoy f, dm_filter_module m) {
  (void)f, (void)m;
}
EXPORT const void *envoy_dynamic_module_on_http_filter_per_route_config_new(
    dm_envoy_buffer name, dm_envoy_buffer config) {
  (void)name, (void)config;
  return NULL; /* no per-route configuration */
}
EXPORT void envoy_dynamic_module_on_http_filter_per_route_config_destroy(const void *config) {
  (void)config;
}
