/* delen_receiver: a receiver process of the delen node, in C on rcl (see delen_ros/ros/ingress.py).
 *
 * Same job and protocol as the Python receiver, at a fraction of its CPU per frame: take camera
 * frames serialized (no message built), copy each into a slot of its camera's shared-memory ring
 * (the layout of delen_ros/core/frame_ring.py), and send a note to the node over the frames pipe.
 * DELEN_RECEIVER_IN_SLOT=1 takes each straight into a free slot instead (one copy fewer; opt-in).
 *
 * Pipes carry multiprocessing.connection's framing: a 4-byte big-endian length, then the payload.
 *   control (node -> here):  "subscribe <camera> <depth> <sensor_data|reliable> <topic>" | "unsubscribe <camera>"
 *   frames  (here -> node):  'F' camera u32, slot i32 (-1: ring full), bytes u32, arrival ns u64 (little-endian)
 *                            'R' camera u32, path of a new ring       'E' text of an error
 * Arrival is CLOCK_MONOTONIC, which is Python's time.perf_counter_ns() on Linux.
 * Exits when the control pipe closes (the node went away).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <rcl/error_handling.h>
#include <rcl/rcl.h>
#include <rmw/serialized_message.h>
#include <rosidl_runtime_c/message_type_support_struct.h>
#include <sensor_msgs/msg/image.h>

#include "delen_pipe.h"

#define MAX_CAMERAS 1024
#define HEADER_BYTES 24            /* magic 8 | slots u32 | pad u32 | slot_bytes u64 */
#define ALIGN 64
#define POLL_MS 20                 /* a subscribe takes effect within this */

typedef struct {
  int used;
  uint32_t id;
  rcl_subscription_t sub;
  uint8_t *map;                    /* the ring, or NULL before the first frame */
  size_t map_bytes, slot_bytes, next;
  uint32_t slots;
} Camera;

static Camera cameras[MAX_CAMERAS];
static int frames_fd = -1, control_fd = -1;
static uint32_t ring_slots = 6;
static char created[MAX_CAMERAS * 4][256];   /* ring names, unlinked at exit (the node unlinks those it maps) */
static int n_created = 0;

static size_t aligned(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

static int send_note(const void *payload, uint32_t n) {
  uint8_t head[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
  return write_all(frames_fd, head, 4) || write_all(frames_fd, payload, n) ? -1 : 0;
}

static void send_error(const char *text) {
  char buf[512];
  int n = snprintf(buf, sizeof buf, "Ereceiver %d (C): %s", (int)getpid(), text);
  send_note(buf, (uint32_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
}

static const char *ring_dir(size_t needed) {
  const char *dir = getenv("DELEN_SHM_DIR");
  if (dir && *dir) return dir;
  struct statvfs st;
  if (statvfs("/dev/shm", &st) == 0 && (double)st.f_bavail * st.f_frsize > 2.0 * needed) return "/dev/shm";
  dir = getenv("TMPDIR");
  return dir && *dir ? dir : "/tmp";
}

/* A new ring for a camera's frames of n bytes; announces it to the node. */
static int new_ring(Camera *c, size_t n) {
  if (c->map) munmap(c->map, c->map_bytes);
  c->map = NULL;
  size_t first = aligned(HEADER_BYTES + ring_slots), total = first + ring_slots * aligned(n);
  char path[256];
  snprintf(path, sizeof path, "%s/delen-frames-XXXXXX", ring_dir(total));
  int fd = mkstemp(path);
  if (fd < 0) { send_error("cannot create a ring file"); return -1; }
  if (ftruncate(fd, (off_t)total) != 0) { close(fd); unlink(path); send_error("cannot size a ring file"); return -1; }
  uint8_t *map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (map == MAP_FAILED) { unlink(path); send_error("cannot map a ring file"); return -1; }
  uint64_t slot_bytes = n;
  memcpy(map, "DELENRG1", 8);
  memcpy(map + 8, &ring_slots, 4);
  memset(map + 12, 0, 4);
  memcpy(map + 16, &slot_bytes, 8);
  c->map = map; c->map_bytes = total; c->slot_bytes = n; c->slots = ring_slots; c->next = 0;
  if (n_created < (int)(sizeof created / sizeof created[0])) snprintf(created[n_created++], 256, "%s", path);
  uint8_t note[5 + 256];
  note[0] = 'R';
  memcpy(note + 1, &c->id, 4);
  size_t len = strlen(path);
  memcpy(note + 5, path, len);
  return send_note(note, (uint32_t)(5 + len));
}

static uint8_t *slot_at(const Camera *c, uint32_t s) {
  return c->map + aligned(HEADER_BYTES + c->slots) + s * aligned(c->slot_bytes);
}

/* A free slot of the camera's ring (-1: none, or no ring yet). */
static int32_t free_slot(const Camera *c) {
  if (!c->map) return -1;
  const uint8_t *state = c->map + HEADER_BYTES;
  for (uint32_t i = 0; i < c->slots; i++) {
    uint32_t s = (uint32_t)((c->next + i) % c->slots);
    if (__atomic_load_n(&state[s], __ATOMIC_ACQUIRE) == 0) return (int32_t)s;
  }
  return -1;
}

static void send_frame_note(const Camera *c, int32_t slot, size_t n, uint64_t arrival) {
  uint8_t note[21];
  uint32_t bytes = (uint32_t)n;
  note[0] = 'F';
  memcpy(note + 1, &c->id, 4);
  memcpy(note + 5, &slot, 4);
  memcpy(note + 9, &bytes, 4);
  memcpy(note + 13, &arrival, 8);
  send_note(note, sizeof note);
}

static void on_frame(Camera *c, const uint8_t *data, size_t n, uint64_t arrival) {
  if (!c->map || n > c->slot_bytes) {
    if (new_ring(c, n) != 0) return;
  }
  int32_t slot = free_slot(c);
  if (slot >= 0) {
    memcpy(slot_at(c, (uint32_t)slot), data, n);
    __atomic_store_n(&c->map[HEADER_BYTES + slot], 1, __ATOMIC_RELEASE);
    c->next = ((uint32_t)slot + 1) % c->slots;
  }
  send_frame_note(c, slot, n, arrival);
}

/* Taking a frame straight into a ring slot: rmw copies it there, one copy fewer than into a
   buffer of our own and then the slot. rmw grows the buffer (reallocate) when the frame is bigger
   than the slot; then this allocator hands it fresh heap memory and leaves the slot alone. */
static uint8_t *taking_into = NULL;
static void *heap_allocate(size_t n, void *state) { (void)state; return malloc(n); }
static void heap_deallocate(void *p, void *state) { (void)state; if (p != taking_into) free(p); }
static void *slot_reallocate(void *p, size_t n, void *state) {
  (void)state;
  return p == taking_into ? malloc(n) : realloc(p, n);
}
static void *heap_zero_allocate(size_t count, size_t size, void *state) { (void)state; return calloc(count, size); }

/* Take every waiting frame of camera c: into a free slot where there is one (unless copy_frames),
   else into msg (no ring yet, or every slot busy), through on_frame. */
static void take_frames(Camera *c, rcl_serialized_message_t *msg, int copy_frames) {
  rcutils_allocator_t slot_allocator = {heap_allocate, heap_deallocate, slot_reallocate, heap_zero_allocate, NULL};
  for (;;) {
    int32_t slot = copy_frames ? -1 : free_slot(c);
    rcl_serialized_message_t in_slot = rmw_get_zero_initialized_serialized_message();
    rcl_serialized_message_t *into = msg;
    if (slot >= 0) {
      taking_into = slot_at(c, (uint32_t)slot);
      in_slot.buffer = taking_into;
      in_slot.buffer_capacity = c->slot_bytes;
      in_slot.allocator = slot_allocator;
      into = &in_slot;
    }
    rmw_message_info_t info = rmw_get_zero_initialized_message_info();
    rcl_ret_t ret = rcl_take_serialized_message(&c->sub, into, &info, NULL);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t arrival = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    if (ret != RCL_RET_OK) {
      if (into == &in_slot && in_slot.buffer != taking_into) free(in_slot.buffer);
      taking_into = NULL;
      rcl_reset_error();
      return;
    }
    if (into == msg) {
      on_frame(c, msg->buffer, msg->buffer_length, arrival);
    } else if (in_slot.buffer == taking_into) {   /* in its slot already */
      __atomic_store_n(&c->map[HEADER_BYTES + slot], 1, __ATOMIC_RELEASE);
      c->next = ((uint32_t)slot + 1) % c->slots;
      send_frame_note(c, slot, in_slot.buffer_length, arrival);
    } else {                                        /* bigger than the slots: a new ring */
      on_frame(c, in_slot.buffer, in_slot.buffer_length, arrival);
      free(in_slot.buffer);
    }
    taking_into = NULL;
  }
}

static Camera *find(uint32_t id) {
  for (int i = 0; i < MAX_CAMERAS; i++)
    if (cameras[i].used && cameras[i].id == id) return &cameras[i];
  return NULL;
}

static void subscribe(rcl_node_t *node, uint32_t id, size_t depth, const char *qos, const char *topic) {
  if (find(id)) return;
  Camera *c = NULL;
  for (int i = 0; i < MAX_CAMERAS && !c; i++)
    if (!cameras[i].used) c = &cameras[i];
  if (!c) { send_error("too many cameras"); return; }
  memset(c, 0, sizeof *c);
  c->id = id;
  c->sub = rcl_get_zero_initialized_subscription();
  rcl_subscription_options_t opts = rcl_subscription_get_default_options();
  opts.qos.history = RMW_QOS_POLICY_HISTORY_KEEP_LAST;
  opts.qos.depth = depth;
  opts.qos.reliability = strcmp(qos, "reliable") == 0 ? RMW_QOS_POLICY_RELIABILITY_RELIABLE
                                                       : RMW_QOS_POLICY_RELIABILITY_BEST_EFFORT;
  opts.qos.durability = RMW_QOS_POLICY_DURABILITY_VOLATILE;
  const rosidl_message_type_support_t *ts = ROSIDL_GET_MSG_TYPE_SUPPORT(sensor_msgs, msg, Image);
  if (rcl_subscription_init(&c->sub, node, ts, topic, &opts) != RCL_RET_OK) {
    char text[300];
    snprintf(text, sizeof text, "cannot subscribe to %s: %s", topic, rcl_get_error_string().str);
    rcl_reset_error();
    send_error(text);
    return;
  }
  c->used = 1;
}

static void unsubscribe(rcl_node_t *node, uint32_t id) {
  Camera *c = find(id);
  if (!c) return;
  (void)!rcl_subscription_fini(&c->sub, node);
  if (c->map) munmap(c->map, c->map_bytes);
  c->used = 0;
  c->map = NULL;
}

/* One control message, if any is waiting; -1 when the node closed the pipe. */
static int read_control(rcl_node_t *node, int timeout_ms) {
  struct pollfd p = {control_fd, POLLIN, 0};
  int r = poll(&p, 1, timeout_ms);
  if (r <= 0) return 0;
  uint8_t head[4];
  if (read_all(control_fd, head, 4)) return -1;
  uint32_t n = ((uint32_t)head[0] << 24) | ((uint32_t)head[1] << 16) | ((uint32_t)head[2] << 8) | head[3];
  if (n > 4096) return -1;
  char msg[4097];
  if (read_all(control_fd, msg, n)) return -1;
  msg[n] = 0;
  unsigned id, depth;
  char qos[32], topic[1024];
  if (sscanf(msg, "subscribe %u %u %31s %1023s", &id, &depth, qos, topic) == 4) subscribe(node, id, depth, qos, topic);
  else if (sscanf(msg, "unsubscribe %u", &id) == 1) unsubscribe(node, id);
  else send_error("unknown control message");
  return 1;
}

int main(int argc, char **argv) {
  int index = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--control-fd")) control_fd = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--frames-fd")) frames_fd = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--index")) index = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--slots")) ring_slots = (uint32_t)atoi(argv[i + 1]);
  }
  if (control_fd < 0 || frames_fd < 0 || ring_slots < 1) {
    fprintf(stderr, "usage: delen_receiver --control-fd N --frames-fd N [--index I] [--slots S]\n");
    return 2;
  }
  rcl_allocator_t alloc = rcl_get_default_allocator();
  rcl_init_options_t init_opts = rcl_get_zero_initialized_init_options();
  rcl_context_t context = rcl_get_zero_initialized_context();
  rcl_node_t node = rcl_get_zero_initialized_node();
  rcl_node_options_t node_opts = rcl_node_get_default_options();
  char name[64];
  snprintf(name, sizeof name, "_delen_ingress_%d_%d", index, (int)getpid());   /* '_': hidden */
  if (rcl_init_options_init(&init_opts, alloc) != RCL_RET_OK || rcl_init(0, NULL, &init_opts, &context) != RCL_RET_OK ||
      rcl_node_init(&node, name, "", &context, &node_opts) != RCL_RET_OK) {
    fprintf(stderr, "delen_receiver: ROS init failed: %s\n", rcl_get_error_string().str);
    return 1;
  }
  rcl_wait_set_t ws = rcl_get_zero_initialized_wait_set();
  if (rcl_wait_set_init(&ws, MAX_CAMERAS, 0, 0, 0, 0, 0, &context, alloc) != RCL_RET_OK) {
    fprintf(stderr, "delen_receiver: wait set: %s\n", rcl_get_error_string().str);
    return 1;
  }
  /* DELEN_RECEIVER_IN_SLOT=1: take frames straight into their slots (0.91 x the CPU here, but not yet
     the default: see benchmarks/cpu/receivers_in_slot/README.md) */
  const char *in_slot_env = getenv("DELEN_RECEIVER_IN_SLOT");
  int copy_frames = !(in_slot_env && strcmp(in_slot_env, "1") == 0);
  rcl_serialized_message_t msg = rmw_get_zero_initialized_serialized_message();
  rmw_serialized_message_init(&msg, 1 << 20, &alloc);
  int running = 1;
  while (running) {
    (void)!rcl_wait_set_clear(&ws);
    int active = 0;
    for (int i = 0; i < MAX_CAMERAS; i++)
      if (cameras[i].used && rcl_wait_set_add_subscription(&ws, &cameras[i].sub, NULL) == RCL_RET_OK) active++;
    if (!active) {   /* nothing to wait for on DDS: wait on the control pipe */
      if (read_control(&node, POLL_MS) < 0) running = 0;
      continue;
    }
    rcl_ret_t ret = rcl_wait(&ws, RCL_MS_TO_NS(POLL_MS));
    if (ret == RCL_RET_OK) {
      for (size_t s = 0; s < ws.size_of_subscriptions; s++) {
        if (!ws.subscriptions[s]) continue;
        for (int i = 0; i < MAX_CAMERAS; i++) {
          Camera *c = &cameras[i];
          if (!c->used || &c->sub != ws.subscriptions[s]) continue;
          take_frames(c, &msg, copy_frames);
        }
      }
    } else {
      rcl_reset_error();
    }
    int control;
    while ((control = read_control(&node, 0)) > 0) {}
    if (control < 0) running = 0;
  }
  for (int i = 0; i < MAX_CAMERAS; i++)
    if (cameras[i].used) unsubscribe(&node, cameras[i].id);
  for (int i = 0; i < n_created; i++) unlink(created[i]);
  rmw_serialized_message_fini(&msg);
  (void)!rcl_wait_set_fini(&ws);
  (void)!rcl_node_fini(&node);
  (void)!rcl_shutdown(&context);
  (void)!rcl_context_fini(&context);
  return 0;
}
