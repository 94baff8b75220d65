/* Whole reads and writes on the node's pipes, for the C helpers (delen_receiver.c, delen_outlet.c). */
#ifndef DELEN_PIPE_H
#define DELEN_PIPE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

/* All n bytes to fd; -1 on an error (EINTR retried). */
static inline int write_all(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    p += w; n -= (size_t)w;
  }
  return 0;
}

/* All n bytes from fd; -1 on an error or at the end of the pipe (EINTR retried). */
static inline int read_all(int fd, void *buf, size_t n) {
  uint8_t *p = buf;
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r == 0) return -1;
    if (r < 0) { if (errno == EINTR) continue; return -1; }
    p += r; n -= (size_t)r;
  }
  return 0;
}

#endif
