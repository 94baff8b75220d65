/* delen_outlet: the node's results leave through this process, in C on rcl (see delen_ros/ros/outlet.py).
 *
 * The node serializes each InferenceResult itself (delen_ros/ros/publishing.py's result_cdr) and hands
 * the bytes over a pipe; this process publishes them with rcl_publish_serialized_message. The DDS
 * write (tens of microseconds a result with a subscriber matched) then runs outside the node's GIL,
 * beside its inference worker instead of in its turn.
 *
 * The pipe (node -> here, fd 0) carries multiprocessing.connection's framing: a 4-byte big-endian
 * length, then the payload, little-endian:
 *   'A' publisher u32, depth u32, topic     advertise: a reliable, volatile, keep-last publisher
 *   'W' publisher u32                       withdraw it
 *   'P' publisher u32, CDR bytes            publish (the bytes start with CDR's encapsulation header)
 *   'T' 0 u32, u64 written (CLOCK_MONOTONIC ns): the node wrote the messages before it then; answered on
 *                                           stdout with 16 bytes, u64 written and u64 when they were all
 *                                           published (the node keeps that lag in its latency bounds)
 * Several messages may come in one write. Errors go to stderr, one line each. Exits when the pipe
 * closes (the node went away). Once its node is up it writes one byte, 'R', on stdout; stdout is
 * written without blocking from then on (a stamp the node does not take in time is dropped).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <rcl/error_handling.h>
#include <rcl/rcl.h>
#include <rmw/serialized_message.h>
#include <rosidl_runtime_c/message_type_support_struct.h>
#include <delen_ros/msg/inference_result.h>

#include "delen_pipe.h"

#define MAX_PUBLISHERS 4096
#define MAX_MESSAGE (1u << 20)

typedef struct {
  int used;
  uint32_t id;
  rcl_publisher_t pub;
} Outlet;

static Outlet outlets[MAX_PUBLISHERS];

static void error_line(const char *what, uint32_t id, const char *detail) {
  fprintf(stderr, "delen_outlet %d: %s (publisher %u): %s\n", (int)getpid(), what, id, detail ? detail : "");
  fflush(stderr);
}

static Outlet *find(uint32_t id) {
  for (int i = 0; i < MAX_PUBLISHERS; i++)
    if (outlets[i].used && outlets[i].id == id) return &outlets[i];
  return NULL;
}

static void advertise(rcl_node_t *node, uint32_t id, uint32_t depth, const char *topic) {
  if (find(id)) { error_line("advertised twice", id, topic); return; }
  Outlet *o = NULL;
  for (int i = 0; i < MAX_PUBLISHERS && !o; i++)
    if (!outlets[i].used) o = &outlets[i];
  if (!o) { error_line("too many publishers", id, topic); return; }
  o->pub = rcl_get_zero_initialized_publisher();
  rcl_publisher_options_t opts = rcl_publisher_get_default_options();
  opts.qos.history = RMW_QOS_POLICY_HISTORY_KEEP_LAST;
  opts.qos.depth = depth;
  opts.qos.reliability = RMW_QOS_POLICY_RELIABILITY_RELIABLE;
  opts.qos.durability = RMW_QOS_POLICY_DURABILITY_VOLATILE;
  const rosidl_message_type_support_t *ts = ROSIDL_GET_MSG_TYPE_SUPPORT(delen_ros, msg, InferenceResult);
  if (rcl_publisher_init(&o->pub, node, ts, topic, &opts) != RCL_RET_OK) {
    error_line("cannot advertise", id, rcl_get_error_string().str);
    rcl_reset_error();
    return;
  }
  o->id = id;
  o->used = 1;
}

static void withdraw(rcl_node_t *node, uint32_t id) {
  Outlet *o = find(id);
  if (!o) return;
  (void)!rcl_publisher_fini(&o->pub, node);
  o->used = 0;
}

static void publish(uint32_t id, uint8_t *data, size_t n) {
  Outlet *o = find(id);
  if (!o) { error_line("no such publisher", id, NULL); return; }
  rcl_serialized_message_t msg = rmw_get_zero_initialized_serialized_message();
  msg.buffer = data;
  msg.buffer_length = n;
  msg.buffer_capacity = n;
  if (rcl_publish_serialized_message(&o->pub, &msg, NULL) != RCL_RET_OK) {
    error_line("cannot publish", id, rcl_get_error_string().str);
    rcl_reset_error();
  }
}

int main(int argc, char **argv) {
  char name[128];
  snprintf(name, sizeof name, "_delen_outlet_%d", (int)getpid());   /* '_': hidden */
  for (int i = 1; i + 1 < argc; i += 2)
    if (!strcmp(argv[i], "--name")) snprintf(name, sizeof name, "%s", argv[i + 1]);
  rcl_allocator_t alloc = rcl_get_default_allocator();
  rcl_init_options_t init_opts = rcl_get_zero_initialized_init_options();
  rcl_context_t context = rcl_get_zero_initialized_context();
  rcl_node_t node = rcl_get_zero_initialized_node();
  rcl_node_options_t node_opts = rcl_node_get_default_options();
  if (rcl_init_options_init(&init_opts, alloc) != RCL_RET_OK || rcl_init(0, NULL, &init_opts, &context) != RCL_RET_OK ||
      rcl_node_init(&node, name, "", &context, &node_opts) != RCL_RET_OK) {
    fprintf(stderr, "delen_outlet: ROS init failed: %s\n", rcl_get_error_string().str);
    return 1;
  }
  uint8_t *buf = malloc(MAX_MESSAGE + 1);
  if (!buf) return 1;
  if (write(1, "R", 1) != 1) return 1;
  fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
  for (;;) {
    uint8_t head[4];
    if (read_all(0, head, 4)) break;
    uint32_t n = ((uint32_t)head[0] << 24) | ((uint32_t)head[1] << 16) | ((uint32_t)head[2] << 8) | head[3];
    if (n < 5 || n > MAX_MESSAGE) { error_line("bad message length", n, "closing"); break; }
    if (read_all(0, buf, n)) break;
    uint32_t id;
    memcpy(&id, buf + 1, 4);
    if (buf[0] == 'P') {
      publish(id, buf + 5, n - 5);
    } else if (buf[0] == 'A' && n >= 9) {
      uint32_t depth;
      memcpy(&depth, buf + 5, 4);
      buf[n] = 0;
      advertise(&node, id, depth ? depth : 1, (const char *)buf + 9);
    } else if (buf[0] == 'W') {
      withdraw(&node, id);
    } else if (buf[0] == 'T' && n == 13) {
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      uint64_t stamps[2];
      memcpy(&stamps[0], buf + 5, 8);
      stamps[1] = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
      (void)!write(1, stamps, sizeof stamps);   /* a full pipe drops it: the node reads stamps when it writes */
    } else {
      error_line("unknown message", id, NULL);
    }
  }
  for (int i = 0; i < MAX_PUBLISHERS; i++)
    if (outlets[i].used) withdraw(&node, outlets[i].id);
  free(buf);
  (void)!rcl_node_fini(&node);
  (void)!rcl_shutdown(&context);
  (void)!rcl_context_fini(&context);
  return 0;
}
