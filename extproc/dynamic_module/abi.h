/* The part of Envoy 1.40's dynamic-module ABI (ABI version "v0.2.0") this module uses.
 *
 * Declared here from the ABI's documented contract, not copied: only the symbols the module
 * exports or calls, with names of our own for the types (the ABI's are long). Checked against
 * Envoy 1.40.0's binary: every callback below is in its dynamic symbol table (build.sh checks
 * again with nm -D), and the version string is what Envoy compares at load (a 6-byte compare
 * with "v0.2.0" in newDynamicModule; another string only logs a warning).
 *
 * Lifetimes, as the ABI states them: a filter pointer Envoy passes stays valid until the
 * module's on_http_filter_destroy returns; buffers Envoy hands over are valid until the hook
 * returns; a scheduler belongs to the module, which deletes it; scheduler_commit may be called
 * from any thread and runs on_http_filter_scheduled on the filter's worker thread, only if the
 * filter is still alive by then.
 */
#ifndef EXTKIT_DM_ABI_H
#define EXTKIT_DM_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DM_ABI_VERSION "v0.2.0"

typedef void *dm_filter_envoy;        /* Envoy's DynamicModuleHttpFilter */
typedef const void *dm_filter_module; /* ours: one per HTTP stream */
typedef void *dm_config_envoy;        /* Envoy's DynamicModuleHttpFilterConfig */
typedef const void *dm_config_module; /* ours: one per filter config */
typedef void *dm_scheduler;           /* created by Envoy, deleted by us */

typedef struct {
  const char *ptr;
  size_t length;
} dm_envoy_buffer; /* Envoy's memory */

typedef struct {
  const char *ptr;
  size_t length;
} dm_module_buffer; /* our memory */

typedef struct {
  const char *key;
  size_t key_length;
  const char *value;
  size_t value_length;
} dm_envoy_header;

typedef struct {
  const char *key;
  size_t key_length;
  const char *value;
  size_t value_length;
} dm_module_header;

typedef enum {
  DM_REQUEST_HEADERS = 0,
  DM_REQUEST_TRAILERS = 1,
  DM_RESPONSE_HEADERS = 2,
  DM_RESPONSE_TRAILERS = 3,
} dm_header_map;

typedef enum { DM_LOG_TRACE, DM_LOG_DEBUG, DM_LOG_INFO, DM_LOG_WARN, DM_LOG_ERROR } dm_log_level;

/* Envoy's FilterHeadersStatus / FilterDataStatus / FilterTrailersStatus, in its order. */
enum { DM_HEADERS_CONTINUE = 0, DM_HEADERS_STOP = 1 };
enum { DM_BODY_CONTINUE = 0, DM_BODY_STOP_AND_BUFFER = 1, DM_BODY_STOP_AND_WATERMARK = 2 };
enum { DM_TRAILERS_CONTINUE = 0, DM_TRAILERS_STOP = 1 };

/* Which body a body callback reads or changes: what the current body callback received, or
 * what Envoy holds for this filter (StopIterationAndBuffer / AndWatermark). */
typedef enum {
  DM_RECEIVED_REQUEST_BODY = 0,
  DM_BUFFERED_REQUEST_BODY = 1,
  DM_RECEIVED_RESPONSE_BODY = 2,
  DM_BUFFERED_RESPONSE_BODY = 3,
} dm_body;

/* -- hooks we export (Envoy resolves all of these at config load) ------------------------- */

const char *envoy_dynamic_module_on_program_init(void);
dm_config_module envoy_dynamic_module_on_http_filter_config_new(dm_config_envoy config_envoy,
                                                                dm_envoy_buffer name,
                                                                dm_envoy_buffer config);
void envoy_dynamic_module_on_http_filter_config_destroy(dm_config_module config);
dm_filter_module envoy_dynamic_module_on_http_filter_new(dm_config_module config,
                                                         dm_filter_envoy filter);
int envoy_dynamic_module_on_http_filter_request_headers(dm_filter_envoy, dm_filter_module,
                                                        bool end_of_stream);
int envoy_dynamic_module_on_http_filter_request_body(dm_filter_envoy, dm_filter_module,
                                                     bool end_of_stream);
int envoy_dynamic_module_on_http_filter_request_trailers(dm_filter_envoy, dm_filter_module);
int envoy_dynamic_module_on_http_filter_response_headers(dm_filter_envoy, dm_filter_module,
                                                         bool end_of_stream);
int envoy_dynamic_module_on_http_filter_response_body(dm_filter_envoy, dm_filter_module,
                                                      bool end_of_stream);
int envoy_dynamic_module_on_http_filter_response_trailers(dm_filter_envoy, dm_filter_module);
void envoy_dynamic_module_on_http_filter_stream_complete(dm_filter_envoy, dm_filter_module);
void envoy_dynamic_module_on_http_filter_destroy(dm_filter_module);
void envoy_dynamic_module_on_http_filter_scheduled(dm_filter_envoy, dm_filter_module,
                                                   uint64_t event_id);
/* Callouts, streams and watermarks: required symbols, unused here. */
void envoy_dynamic_module_on_http_filter_http_callout_done(dm_filter_envoy, dm_filter_module,
                                                           uint64_t callout_id, int result,
                                                           dm_envoy_header *headers,
                                                           size_t headers_size,
                                                           dm_envoy_buffer *body_chunks,
                                                           size_t body_chunks_size);
void envoy_dynamic_module_on_http_filter_http_stream_headers(dm_filter_envoy, dm_filter_module,
                                                             uint64_t stream_id,
                                                             dm_envoy_header *headers,
                                                             size_t headers_size,
                                                             bool end_stream);
void envoy_dynamic_module_on_http_filter_http_stream_data(dm_filter_envoy, dm_filter_module,
                                                          uint64_t stream_id,
                                                          const dm_envoy_buffer *data,
                                                          size_t data_count, bool end_stream);
void envoy_dynamic_module_on_http_filter_http_stream_trailers(dm_filter_envoy, dm_filter_module,
                                                              uint64_t stream_id,
                                                              dm_envoy_header *trailers,
                                                              size_t trailers_size);
void envoy_dynamic_module_on_http_filter_http_stream_complete(dm_filter_envoy, dm_filter_module,
                                                              uint64_t stream_id);
void envoy_dynamic_module_on_http_filter_http_stream_reset(dm_filter_envoy, dm_filter_module,
                                                           uint64_t stream_id, int reason);
void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    dm_filter_envoy, dm_filter_module);
void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    dm_filter_envoy, dm_filter_module);
/* Per-route config: resolved only when a route carries one; never here. */
const void *envoy_dynamic_module_on_http_filter_per_route_config_new(dm_envoy_buffer name,
                                                                     dm_envoy_buffer config);
void envoy_dynamic_module_on_http_filter_per_route_config_destroy(const void *config);

/* -- callbacks Envoy exports ------------------------------------------------------------- */

void envoy_dynamic_module_callback_log(dm_log_level level, dm_module_buffer message);
size_t envoy_dynamic_module_callback_http_get_headers_size(dm_filter_envoy, dm_header_map);
bool envoy_dynamic_module_callback_http_get_headers(dm_filter_envoy, dm_header_map,
                                                    dm_envoy_header *out);
/* set: replaces every value of the name; a NULL value removes the name. add: appends. */
bool envoy_dynamic_module_callback_http_set_header(dm_filter_envoy, dm_header_map,
                                                   dm_module_buffer key, dm_module_buffer value);
bool envoy_dynamic_module_callback_http_add_header(dm_filter_envoy, dm_header_map,
                                                   dm_module_buffer key, dm_module_buffer value);
void envoy_dynamic_module_callback_http_send_response(dm_filter_envoy, uint32_t status,
                                                      dm_module_header *headers,
                                                      size_t headers_size, dm_module_buffer body,
                                                      dm_module_buffer details);
/* Bodies: the size, the number of slices, the slices (valid until the hook returns or the
 * body changes); append and drain change what Envoy forwards. Outside a body callback only
 * the buffered body exists (appending to none makes one). */
size_t envoy_dynamic_module_callback_http_get_body_size(dm_filter_envoy, dm_body);
size_t envoy_dynamic_module_callback_http_get_body_chunks_size(dm_filter_envoy, dm_body);
bool envoy_dynamic_module_callback_http_get_body_chunks(dm_filter_envoy, dm_body,
                                                        dm_envoy_buffer *out);
bool envoy_dynamic_module_callback_http_append_body(dm_filter_envoy, dm_body,
                                                    dm_module_buffer data);
bool envoy_dynamic_module_callback_http_drain_body(dm_filter_envoy, dm_body, size_t bytes);
/* Whether what the current body callback received is this filter's buffer itself (handed
 * back by Envoy after the filter stopped). */
bool envoy_dynamic_module_callback_http_received_buffered_request_body(dm_filter_envoy);
bool envoy_dynamic_module_callback_http_received_buffered_response_body(dm_filter_envoy);
/* The stream's buffer limit (bytes): what a StopIterationAndBuffer body may reach. */
uint64_t envoy_dynamic_module_callback_http_get_buffer_limit(dm_filter_envoy);
/* Merge a serialized google.protobuf.Struct into the stream's dynamic metadata namespace. */
bool envoy_dynamic_module_callback_http_set_dynamic_metadata_struct(dm_filter_envoy,
                                                                    dm_module_buffer ns,
                                                                    dm_module_buffer data);
/* An Envoy attribute (by its id in the ABI's attribute enum), as text or as an integer; false
 * when the stream has no value for it. The text is Envoy's, valid until the hook returns. */
bool envoy_dynamic_module_callback_http_filter_get_attribute_string(dm_filter_envoy, int id,
                                                                    dm_envoy_buffer *out);
bool envoy_dynamic_module_callback_http_filter_get_attribute_int(dm_filter_envoy, int id,
                                                                 uint64_t *out);
/* Stats: a counter defined on a filter config (at config time; 0 is success), incremented
 * from a stream of it (no labels here). */
int envoy_dynamic_module_callback_http_filter_config_define_counter(dm_config_envoy,
                                                                    dm_module_buffer name,
                                                                    dm_module_buffer *labels,
                                                                    size_t labels_size,
                                                                    size_t *id);
int envoy_dynamic_module_callback_http_filter_increment_counter(dm_filter_envoy, size_t id,
                                                                dm_module_buffer *labels,
                                                                size_t labels_size,
                                                                uint64_t value);
/* Have Envoy pick the request's route again (after changing what it matches on). */
void envoy_dynamic_module_callback_http_clear_route_cache(dm_filter_envoy);
bool envoy_dynamic_module_callback_http_received_buffered_request_body(dm_filter_envoy);
void envoy_dynamic_module_callback_http_filter_continue_decoding(dm_filter_envoy);
void envoy_dynamic_module_callback_http_filter_continue_encoding(dm_filter_envoy);
dm_scheduler envoy_dynamic_module_callback_http_filter_scheduler_new(dm_filter_envoy);
void envoy_dynamic_module_callback_http_filter_scheduler_commit(dm_scheduler, uint64_t event_id);
void envoy_dynamic_module_callback_http_filter_scheduler_delete(dm_scheduler);

#endif
