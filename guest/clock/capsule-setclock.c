/*
 * capsule-setclock: steps the guest's wall clock (CLOCK_REALTIME) by a signed number of
 * microseconds.
 *
 * Why it exists: `docker pause` stops the whole VM (QMP stop), and the guest's clock stands still
 * with it; after `docker unpause` the guest is behind by the time it was paused. The host then
 * tells the agent its own time (agent.proto SyncClock) and the agent steps the clock with this
 * program, since Node cannot call clock_settime(2). It takes a step, not a time: the step is read
 * and applied here, in one go, so the ~100 ms it takes to start a process under TCG does not end
 * up in the clock.
 *
 * Usage: capsule-setclock STEP_MICROSECONDS   (e.g. 2500000 or -1500)
 * Exit status 0 on success; 2 for bad usage; 1 when the clock cannot be read or set (message on
 * stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: capsule-setclock STEP_MICROSECONDS\n");
    return 2;
  }
  char *end = NULL;
  errno = 0;
  long long step_us = strtoll(argv[1], &end, 10);
  if (errno != 0 || end == argv[1] || *end != '\0') {
    fprintf(stderr, "capsule-setclock: invalid step %s\n", argv[1]);
    return 2;
  }
  struct timespec now;
  if (clock_gettime(CLOCK_REALTIME, &now) != 0) {
    fprintf(stderr, "capsule-setclock: clock_gettime: %s\n", strerror(errno));
    return 1;
  }
  long long ns = (long long)now.tv_nsec + (step_us % 1000000LL) * 1000LL;
  long long sec = (long long)now.tv_sec + step_us / 1000000LL;
  while (ns < 0) {
    ns += 1000000000LL;
    sec -= 1;
  }
  while (ns >= 1000000000LL) {
    ns -= 1000000000LL;
    sec += 1;
  }
  if (sec < 0) {
    fprintf(stderr, "capsule-setclock: step %s goes before the epoch\n", argv[1]);
    return 2;
  }
  struct timespec target = {.tv_sec = (time_t)sec, .tv_nsec = (long)ns};
  if (clock_settime(CLOCK_REALTIME, &target) != 0) {
    fprintf(stderr, "capsule-setclock: clock_settime: %s\n", strerror(errno));
    return 1;
  }
  return 0;
}
