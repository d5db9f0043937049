/* An Envoy HTTP filter (dynamic module, Envoy 1.40's ABI) that runs an extproc.Processor's
 * header hooks inside the data-plane Envoy, with CPython embedded.
 *
 * Threads: Envoy's worker threads never take the GIL. A worker copies the headers into an
 * event, queues it, wakes the Python thread through an eventfd and stops the stream
 * (StopAllIterationAndWatermark). The Python thread (an asyncio loop, bridge.py)
 * runs the hook and answers with the header changes or a local reply; the answer is stored
 * on the stream and Envoy's scheduler runs on_http_filter_scheduled on the stream's worker,
 * which applies it and continues the stream. A slow hook holds only its own stream.
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
enum { EV_REQUEST_HEADERS = 1, EV_RESPONSE_HEADERS = 2, EV_END = 3 };
/* Header operations in an answer. */
enum { OP_SET = 0, OP_ADD = 1, OP_REMOVE = 2 };
/* Hooks a config's class defines (from the bridge). */
enum { HOOK_REQUEST_HEADERS = 1, HOOK_RESPONSE_HEADERS = 2 };

typedef struct {
  int op;
  char *name;
  size_t name_len;
  char *value; /* NULL for OP_REMOVE */
  size_t value_len;
} header_op;

typedef struct {
  int kind;  /* 0: no answer waiting */
  int reply; /* a local reply instead of continuing */
  uint32_t status;
  header_op *ops; /* header changes, or the local reply's headers (OP_SET) */
  size_t n_ops;
  char *body;
  size_t body_len;
  char *details;
  size_t details_len;
} answer;

typedef struct {
  long id; /* the bridge's handle of the class */
  int hooks;
  long timeout_ms; /* the class's message_timeout */
  int fail_open;   /* no answer in time: continue unchanged instead of 504 */
} filter_config;

typedef struct stream {
  atomic_int refs;
  pthread_mutex_t lock;
  const filter_config *config;
  dm_scheduler scheduler; /* under lock; NULL once Envoy destroyed the filter */
  int alive;              /* under lock */
  int python_holds;       /* under lock: the bridge keeps a Processor for this stream */
  int local_replied;      /* worker only */
  int waiting;            /* under lock: the phase waiting for an answer (0: none) */
  int abandoned;          /* under lock: timed out failing open, no more phases */
  answer pending;         /* under lock */
  /* the watchdog's list (under watch_lock) */
  struct stream *watch_prev, *watch_next;
  int watched; /* the phase whose deadline is listed (0: none) */
  struct timespec deadline;
} stream;

typedef struct event {
  struct event *next;
  stream *stream;
  int kind;
  long config_id;
  size_t n;              /* headers */
  uint32_t (*spans)[2];  /* key and value lengths, n pairs */
  char *bytes;           /* keys and values, back to back */
} event;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static event *queue_head, *queue_tail;
static int wake_fd = -1;
static int python_ready;

static void log_line(dm_log_level level, const char *text) {
  dm_module_buffer message = {text, strlen(text)};
  envoy_dynamic_module_callback_log(level, message);
}

/* -- streams ------------------------------------------------------------------------------- */

static void free_answer(answer *a) {
  for (size_t i = 0; i < a->n_ops; i++) {
    free(a->ops[i].name);
    free(a->ops[i].value);
  }
  free(a->ops);
  free(a->body);
  free(a->details);
  memset(a, 0, sizeof(*a));
}

static void unref(stream *s) {
  if (atomic_fetch_sub(&s->refs, 1) == 1) {
    free_answer(&s->pending);
    pthread_mutex_destroy(&s->lock);
    free(s);
  }
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

/* Copy the header map into an event for the Python thread (a stopped stream's map is Envoy's
 * to free if the stream is reset, so the bridge never reads Envoy's memory). */
static event *headers_event(dm_filter_envoy filter, stream *s, dm_header_map map, int kind) {
  size_t n = envoy_dynamic_module_callback_http_get_headers_size(filter, map);
  dm_envoy_header stack_headers[32];
  dm_envoy_header *headers = n <= 32 ? stack_headers : malloc(n * sizeof(*headers));
  if (headers == NULL || (n && !envoy_dynamic_module_callback_http_get_headers(filter, map,
                                                                                 headers))) {
    n = 0;
  }
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    total += headers[i].key_length + headers[i].value_length;
  }
  event *ev = malloc(sizeof(event) + n * sizeof(uint32_t[2]) + total);
  if (ev == NULL) {
    abort();
  }
  ev->next = NULL;
  ev->stream = s;
  ev->kind = kind;
  ev->config_id = s->config->id;
  ev->n = n;
  ev->spans = (uint32_t(*)[2])(ev + 1);
  ev->bytes = (char *)(ev->spans + n);
  char *at = ev->bytes;
  for (size_t i = 0; i < n; i++) {
    ev->spans[i][0] = (uint32_t)headers[i].key_length;
    ev->spans[i][1] = (uint32_t)headers[i].value_length;
    memcpy(at, headers[i].key, headers[i].key_length);
    at += headers[i].key_length;
    memcpy(at, headers[i].value, headers[i].value_length);
    at += headers[i].value_length;
  }
  if (headers != stack_headers) {
    free(headers);
  }
  return ev;
}

/* -- the message timeout, kept here ----------------------------------------------------------
 * A phase Python has not answered within the message timeout is answered from C, as Envoy's
 * ext_proc filter answers a message timeout (504; or, failing open, the stream goes on and
 * gets no more phases), even when Python's loop is blocked by a hook that never yields: one
 * watchdog thread keeps the deadline of every waiting phase (at most one per stream: phases
 * come one after another) in a list it leaves as soon as the phase is answered, and commits the
 * answer through the stream's scheduler. Python's late answer then finds the phase no longer
 * waiting and is dropped, and a phase still queued for Python is not handed to it. */

static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond;
static stream *watching; /* streams with a waiting phase, newest first (under watch_lock) */
static atomic_int watchdog_started;

static int before(const struct timespec *a, const struct timespec *b) {
  return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void commit_locked(stream *s, answer *a) {
  free_answer(&s->pending);
  s->pending = *a;
  memset(a, 0, sizeof(*a));
  envoy_dynamic_module_callback_http_filter_scheduler_commit(s->scheduler,
                                                             (uint64_t)s->pending.kind);
}

/* Take phase ``kind``'s deadline (any phase's: 0) off the watchdog's list, when listed: the
 * phase was answered, timed out, or the stream ended. Drops the list's reference. */
static void unwatch(stream *s, int kind) {
  pthread_mutex_lock(&watch_lock);
  int listed = s->watched != 0 && (kind == 0 || s->watched == kind);
  if (listed) {
    if (s->watch_prev != NULL) {
      s->watch_prev->watch_next = s->watch_next;
    } else {
      watching = s->watch_next;
    }
    if (s->watch_next != NULL) {
      s->watch_next->watch_prev = s->watch_prev;
    }
    s->watch_prev = s->watch_next = NULL;
    s->watched = 0;
  }
  pthread_mutex_unlock(&watch_lock);
  if (listed) {
    unref(s);
  }
}

static void time_out(stream *s, int kind) {
  static const char details[] = "extproc_message_timeout";
  pthread_mutex_lock(&s->lock);
  if (s->waiting == kind && s->alive && s->scheduler != NULL) {
    s->waiting = 0;
    answer a = {0};
    a.kind = kind;
    if (s->config->fail_open) {
      s->abandoned = 1; /* as Envoy's ext_proc: no more phases for this stream */
    } else {
      a.reply = 1;
      a.status = 504;
      a.details = strdup(details);
      a.details_len = sizeof(details) - 1;
    }
    commit_locked(s, &a);
  }
  pthread_mutex_unlock(&s->lock);
}

static void *watchdog(void *unused) {
  (void)unused;
  pthread_mutex_lock(&watch_lock);
  for (;;) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    stream *due = NULL, *earliest = NULL;
    for (stream *s = watching; s != NULL; s = s->watch_next) {
      if (!before(&now, &s->deadline)) {
        due = s;
        break;
      }
      if (earliest == NULL || before(&s->deadline, &earliest->deadline)) {
        earliest = s;
      }
    }
    if (due != NULL) {
      int kind = due->watched;
      atomic_fetch_add(&due->refs, 1); /* kept across the unlock */
      pthread_mutex_unlock(&watch_lock);
      unwatch(due, kind); /* unless answered meanwhile (then a later phase's is not touched) */
      time_out(due, kind);
      unref(due);
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

static void watch(stream *s, int kind) {
  struct timespec at;
  clock_gettime(CLOCK_MONOTONIC, &at);
  long ms = s->config->timeout_ms;
  at.tv_sec += ms / 1000;
  at.tv_nsec += (ms % 1000) * 1000000L;
  if (at.tv_nsec >= 1000000000L) {
    at.tv_sec += 1;
    at.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&watch_lock);
  s->deadline = at;
  if (s->watched != 0) {
    /* still listed for the phase before, answered but not yet taken off: now this one's */
    s->watched = kind;
    pthread_mutex_unlock(&watch_lock);
    return;
  }
  atomic_fetch_add(&s->refs, 1); /* the list's */
  s->watched = kind;
  s->watch_prev = NULL;
  s->watch_next = watching;
  if (watching != NULL) {
    watching->watch_prev = s;
  }
  int was_empty = watching == NULL;
  watching = s;
  pthread_mutex_unlock(&watch_lock);
  if (was_empty) {
    /* otherwise the watchdog already waits for an earlier deadline (one timeout per
     * config: a new deadline is never earlier than another config's by more than the
     * difference of the two timeouts, which the watchdog's next wake-up catches) */
    pthread_cond_signal(&watch_cond);
  }
}

/* Hand a phase to Python; the stream waits for its answer. */
static int send_phase(dm_filter_envoy filter, stream *s, dm_header_map map, int kind) {
  event *ev = headers_event(filter, s, map, kind);
  atomic_fetch_add(&s->refs, 1); /* the event's: dropped when Python answers */
  pthread_mutex_lock(&s->lock);
  if (s->scheduler == NULL) {
    s->scheduler = envoy_dynamic_module_callback_http_filter_scheduler_new(filter);
  }
  s->python_holds = 1;
  s->waiting = kind;
  pthread_mutex_unlock(&s->lock);
  if (atomic_load(&watchdog_started) && s->config->timeout_ms > 0) {
    watch(s, kind);
  }
  enqueue(ev);
  return DM_HEADERS_STOP_ALL_AND_WATERMARK;
}

/* -- the Python module the bridge talks to (_extkit_dm) -------------------------------------- */

static PyObject *py_wake_fd(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  return PyLong_FromLong(wake_fd);
}

/* Every queued event as (stream, kind, config, [(name, value), ...] or None). */
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
    if (ev->kind != EV_END) {
      /* A phase answered meanwhile (its message timeout passed) or of a stream Envoy ended
       * is not handed to Python: its hook would run for a request that is over. */
      stream *s = ev->stream;
      pthread_mutex_lock(&s->lock);
      int stale = !s->alive || s->waiting != ev->kind;
      pthread_mutex_unlock(&s->lock);
      if (stale) {
        unref(s); /* the event's */
        free(ev);
        ev = next;
        continue;
      }
    }
    PyObject *headers = Py_None;
    Py_INCREF(Py_None);
    if (ev->kind != EV_END) {
      Py_DECREF(Py_None);
      headers = PyList_New((Py_ssize_t)ev->n);
      const char *at = ev->bytes;
      for (size_t i = 0; i < ev->n; i++) {
        uint32_t key_len = ev->spans[i][0], value_len = ev->spans[i][1];
        /* latin-1: every byte survives a read/write round trip (what extproc.Headers holds) */
        PyObject *pair = Py_BuildValue("(NN)", PyUnicode_DecodeLatin1(at, key_len, NULL),
                                       PyUnicode_DecodeLatin1(at + key_len, value_len, NULL));
        at += key_len + value_len;
        PyList_SET_ITEM(headers, (Py_ssize_t)i, pair);
      }
    }
    PyObject *item = Py_BuildValue("(KilN)", (unsigned long long)(uintptr_t)ev->stream,
                                   ev->kind, ev->config_id, headers);
    PyList_Append(list, item);
    Py_DECREF(item);
    if (ev->kind == EV_END) {
      unref(ev->stream);
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
  char *copy = malloc((size_t)size + 1);
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
  Py_ssize_t n = PyList_Size(list);
  if (n < 0) {
    return -1;
  }
  a->ops = calloc((size_t)n + 1, sizeof(header_op));
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
  int a_kind = a->kind;
  pthread_mutex_lock(&s->lock);
  /* A phase the watchdog answered (its message timeout passed) is no longer waiting. */
  int answered = 0;
  if (s->alive && s->scheduler != NULL && s->waiting == a->kind) {
    s->waiting = 0;
    commit_locked(s, a);
    answered = 1;
  }
  if (done) {
    s->python_holds = 0;
  }
  pthread_mutex_unlock(&s->lock);
  free_answer(a); /* the stream was gone: nothing to apply */
  if (answered) {
    unwatch(s, a_kind);
  }
  unref(s);
}

/* answer(stream, kind, done, ops): continue, with these header changes. */
static PyObject *py_answer(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long handle;
  int kind, done;
  PyObject *ops;
  if (!PyArg_ParseTuple(args, "KipO", &handle, &kind, &done, &ops)) {
    return NULL;
  }
  answer a = {0};
  a.kind = kind;
  if (parse_ops(ops, &a) < 0) {
    free_answer(&a);
    return NULL; /* the bridge answers again without changes */
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
  if (!PyArg_ParseTuple(args, "KiIOSS", &handle, &kind, &status, &headers, &body, &details)) {
    return NULL;
  }
  answer a = {0};
  a.kind = kind;
  a.reply = 1;
  a.status = status;
  a.body = copy_bytes(body, &a.body_len);
  a.details = copy_bytes(details, &a.details_len);
  PyObject *ops = PyList_New(0);
  Py_ssize_t n = headers == Py_None ? 0 : PyList_Size(headers);
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

static PyMethodDef methods[] = {
    {"wake_fd", py_wake_fd, METH_NOARGS, "The eventfd that is readable when events wait."},
    {"take", py_take, METH_NOARGS, "Clear the eventfd and take every waiting event."},
    {"answer", py_answer, METH_VARARGS, "Continue a stream with header changes."},
    {"reply", py_reply, METH_VARARGS, "Answer a stream with a local reply."},
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
  (void)envoy_config;
  (void)name;
  if (!python_ready && start_python() < 0) {
    return NULL;
  }
  PyGILState_STATE gil = PyGILState_Ensure();
  filter_config *result = NULL;
  PyObject *got = PyObject_CallMethod(bridge, "configure", "s#", config.ptr,
                                      (Py_ssize_t)config.length);
  long id, timeout_ms;
  int hooks, fail_open;
  if (got == NULL || !PyArg_ParseTuple(got, "lilp", &id, &hooks, &timeout_ms, &fail_open)) {
    PyErr_Print();
    log_line(DM_LOG_ERROR, "extkit_dm: the filter config was refused (reason on stderr)");
  } else {
    result = malloc(sizeof(*result));
    result->id = id;
    result->hooks = hooks;
    result->timeout_ms = timeout_ms;
    result->fail_open = fail_open;
  }
  Py_XDECREF(got);
  PyGILState_Release(gil);
  if (result != NULL) {
    start_watchdog();
  }
  return result;
}

EXPORT void envoy_dynamic_module_on_http_filter_config_destroy(dm_config_module config) {
  /* Streams of this config may still wait for Python; the config stays (a few bytes). */
  (void)config;
}

EXPORT dm_filter_module envoy_dynamic_module_on_http_filter_new(dm_config_module config,
                                                                dm_filter_envoy filter) {
  (void)filter;
  stream *s = calloc(1, sizeof(stream));
  atomic_init(&s->refs, 1);
  pthread_mutex_init(&s->lock, NULL);
  s->config = config;
  s->alive = 1;
  return s;
}

EXPORT int envoy_dynamic_module_on_http_filter_request_headers(dm_filter_envoy filter,
                                                               dm_filter_module module,
                                                               bool end_of_stream) {
  (void)end_of_stream;
  stream *s = (stream *)module;
  if (!(s->config->hooks & HOOK_REQUEST_HEADERS)) {
    return DM_HEADERS_CONTINUE;
  }
  return send_phase(filter, s, DM_REQUEST_HEADERS, EV_REQUEST_HEADERS);
}

EXPORT int envoy_dynamic_module_on_http_filter_response_headers(dm_filter_envoy filter,
                                                                dm_filter_module module,
                                                                bool end_of_stream) {
  (void)end_of_stream;
  stream *s = (stream *)module;
  pthread_mutex_lock(&s->lock);
  int abandoned = s->abandoned;
  pthread_mutex_unlock(&s->lock);
  if (!(s->config->hooks & HOOK_RESPONSE_HEADERS) || s->local_replied || abandoned) {
    return DM_HEADERS_CONTINUE;
  }
  return send_phase(filter, s, DM_RESPONSE_HEADERS, EV_RESPONSE_HEADERS);
}

EXPORT void envoy_dynamic_module_on_http_filter_scheduled(dm_filter_envoy filter,
                                                          dm_filter_module module,
                                                          uint64_t event_id) {
  stream *s = (stream *)module;
  pthread_mutex_lock(&s->lock);
  answer a = s->pending;
  memset(&s->pending, 0, sizeof(s->pending));
  pthread_mutex_unlock(&s->lock);
  if (a.kind == 0 || (uint64_t)a.kind != event_id) {
    free_answer(&a);
    return;
  }
  if (a.reply) {
    dm_module_header stack_headers[16];
    dm_module_header *headers =
        a.n_ops <= 16 ? stack_headers : malloc(a.n_ops * sizeof(dm_module_header));
    for (size_t i = 0; i < a.n_ops; i++) {
      headers[i] = (dm_module_header){a.ops[i].name, a.ops[i].name_len, a.ops[i].value,
                                      a.ops[i].value_len};
    }
    s->local_replied = 1;
    envoy_dynamic_module_callback_http_send_response(
        filter, a.status, headers, a.n_ops, (dm_module_buffer){a.body, a.body_len},
        (dm_module_buffer){a.details, a.details_len});
    if (headers != stack_headers) {
      free(headers);
    }
    free_answer(&a);
    return;
  }
  dm_header_map map = a.kind == EV_REQUEST_HEADERS ? DM_REQUEST_HEADERS : DM_RESPONSE_HEADERS;
  for (size_t i = 0; i < a.n_ops; i++) {
    header_op *op = &a.ops[i];
    dm_module_buffer key = {op->name, op->name_len};
    dm_module_buffer value = {op->value, op->value_len};
    if (op->op == OP_ADD) {
      envoy_dynamic_module_callback_http_add_header(filter, map, key, value);
    } else {
      envoy_dynamic_module_callback_http_set_header(filter, map, key, value); /* NULL: remove */
    }
  }
  free_answer(&a);
  if (map == DM_REQUEST_HEADERS) {
    envoy_dynamic_module_callback_http_filter_continue_decoding(filter);
  } else {
    envoy_dynamic_module_callback_http_filter_continue_encoding(filter);
  }
}

EXPORT void envoy_dynamic_module_on_http_filter_destroy(dm_filter_module module) {
  stream *s = (stream *)module;
  pthread_mutex_lock(&s->lock);
  s->alive = 0;
  dm_scheduler scheduler = s->scheduler;
  s->scheduler = NULL;
  int holds = s->python_holds;
  s->python_holds = 0;
  free_answer(&s->pending);
  pthread_mutex_unlock(&s->lock);
  if (scheduler != NULL) {
    envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler);
  }
  unwatch(s, 0);
  if (holds) {
    /* The bridge still keeps this stream's Processor (a later phase never came): drop it. */
    event *ev = calloc(1, sizeof(event));
    ev->stream = s;
    ev->kind = EV_END;
    ev->config_id = s->config->id;
    atomic_fetch_add(&s->refs, 1);
    enqueue(ev);
  }
  unref(s);
}

/* Phases the module does not hand to Python (yet) pass through. */
EXPORT int envoy_dynamic_module_on_http_filter_request_body(dm_filter_envoy f, dm_filter_module m,
                                                            bool end_of_stream) {
  (void)f, (void)m, (void)end_of_stream;
  return DM_BODY_CONTINUE;
}
EXPORT int envoy_dynamic_module_on_http_filter_request_trailers(dm_filter_envoy f,
                                                                dm_filter_module m) {
  (void)f, (void)m;
  return DM_TRAILERS_CONTINUE;
}
EXPORT int envoy_dynamic_module_on_http_filter_response_body(dm_filter_envoy f, dm_filter_module m,
                                                             bool end_of_stream) {
  (void)f, (void)m, (void)end_of_stream;
  return DM_BODY_CONTINUE;
}
EXPORT int envoy_dynamic_module_on_http_filter_response_trailers(dm_filter_envoy f,
                                                                 dm_filter_module m) {
  (void)f, (void)m;
  return DM_TRAILERS_CONTINUE;
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
