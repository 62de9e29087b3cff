/*
 * capsule-console: runs an OCI runtime command (`crun run|exec --console-socket ...`) for a
 * container process that has a terminal, and carries that terminal over plain pipes.
 *
 * Why it exists: with `process.terminal: true` the OCI runtime creates the pty inside the
 * container and hands its master side over a unix socket (SCM_RIGHTS). Node cannot receive a file
 * descriptor that way, so the agent runs this small program in between:
 *
 *   agent --stdin pipe-->  capsule-console  --write-->  pty master  ==  container's /dev/console
 *   agent <-stdout pipe--  capsule-console  <--read---  pty master
 *   agent --fd 3 pipe--->  "ROWS COLS\n" lines  ->  TIOCSWINSZ on the master (the kernel then
 *                                                    sends SIGWINCH to the foreground group)
 *
 * Usage: capsule-console SOCKET ROWS COLS -- RUNTIME ARGS...
 *   SOCKET is a path this program binds (it must not exist) and passes to the runtime as
 *   --console-socket (the caller puts it in ARGS). ROWS/COLS (0 = leave as is) set the size as
 *   soon as the master arrives, before the runtime lets the process start.
 *
 * Exit status: the runtime's, so that the caller sees exactly what it would see running the
 * runtime directly (a runtime killed by a signal is re-raised on this process). Output is drained
 * until the pty reports EIO (every holder of the slave side has closed it) after the runtime
 * exited, so nothing the process wrote last is lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static int sigchld_pipe[2] = {-1, -1};

static void on_sigchld(int signo) {
  (void)signo;
  int saved = errno;
  if (write(sigchld_pipe[1], "x", 1) < 0) {
    /* the pipe is full: a wake-up is already pending */
  }
  errno = saved;
}

static void die(const char *what) {
  fprintf(stderr, "capsule-console: %s: %s\n", what, strerror(errno));
  exit(125);
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, -1);
        continue;
      }
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

static void set_size(int master, unsigned rows, unsigned cols) {
  if (master < 0 || rows == 0 || cols == 0) return;
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  ioctl(master, TIOCSWINSZ, &ws);
}

/* Receives the pty master the runtime sends over the console socket; -1 if none came. */
static int receive_master(int conn) {
  char data[256];
  char control[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                       .msg_controllen = sizeof(control)};
  ssize_t n;
  do {
    n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int fd;
      memcpy(&fd, CMSG_DATA(c), sizeof(fd));
      return fd;
    }
  }
  return -1;
}

/* Accepts the runtime's connection on the console socket and takes the master it sends. */
static int accept_master(int *listener, const char *socket_path, unsigned rows, unsigned cols) {
  int conn = accept4(*listener, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) return -1;
  int master = receive_master(conn);
  close(conn);
  if (master >= 0) {
    set_size(master, rows, cols);
    close(*listener);
    *listener = -1;
    unlink(socket_path);
  }
  return master;
}

int main(int argc, char **argv) {
  if (argc < 6 || strcmp(argv[4], "--") != 0) {
    fprintf(stderr, "usage: capsule-console SOCKET ROWS COLS -- RUNTIME ARGS...\n");
    return 125;
  }
  const char *socket_path = argv[1];
  unsigned rows = (unsigned)strtoul(argv[2], NULL, 10);
  unsigned cols = (unsigned)strtoul(argv[3], NULL, 10);
  char **command = &argv[5];

  /* fd 3 is the resize channel when the caller opened it. */
  int control = fcntl(3, F_GETFD) >= 0 ? 3 : -1;
  if (control >= 0) fcntl(control, F_SETFD, FD_CLOEXEC);

  if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe");
  struct sigaction sa = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGCHLD, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) die("socket");
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof(addr.sun_path)) {
    errno = ENAMETOOLONG;
    die(socket_path);
  }
  strcpy(addr.sun_path, socket_path);
  fcntl(listener, F_SETFL, O_NONBLOCK);
  if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");
  if (listen(listener, 1) < 0) die("listen");

  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    /* The runtime must not inherit the resize channel. */
    if (control >= 0) close(control);
    execvp(command[0], command);
    fprintf(stderr, "capsule-console: exec %s: %s\n", command[0], strerror(errno));
    _exit(127);
  }

  int master = -1;
  int status = 0;
  int exited = 0;
  int stdin_open = 1;
  char buf[32768];
  char ctl[128];
  size_t ctl_len = 0;

  for (;;) {
    struct pollfd fds[5];
    int n = 0;
    int i_sig = -1, i_listen = -1, i_master = -1, i_stdin = -1, i_ctl = -1;
    fds[n] = (struct pollfd){.fd = sigchld_pipe[0], .events = POLLIN};
    i_sig = n++;
    if (listener >= 0) {
      fds[n] = (struct pollfd){.fd = listener, .events = POLLIN};
      i_listen = n++;
    }
    if (master >= 0) {
      fds[n] = (struct pollfd){.fd = master, .events = POLLIN};
      i_master = n++;
      if (stdin_open) {
        fds[n] = (struct pollfd){.fd = 0, .events = POLLIN};
        i_stdin = n++;
      }
    }
    if (control >= 0) {
      fds[n] = (struct pollfd){.fd = control, .events = POLLIN};
      i_ctl = n++;
    }
    if (exited && master < 0) {
      /* The runtime may have sent the master just before it exited: take it if it is queued. */
      if (listener >= 0) master = accept_master(&listener, socket_path, rows, cols);
      if (master < 0) break;
      continue;
    }
    int timeout = exited ? 2000 : -1;
    int ready = poll(fds, (nfds_t)n, timeout);
    if (ready < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (ready == 0 && exited) break; /* nothing more within 2 s after the exit: done */

    if (fds[i_sig].revents & POLLIN) {
      while (read(sigchld_pipe[0], buf, sizeof(buf)) > 0) {
      }
      if (!exited && waitpid(child, &status, WNOHANG) == child) exited = 1;
    }
    if (i_listen >= 0 && (fds[i_listen].revents & POLLIN)) {
      master = accept_master(&listener, socket_path, rows, cols);
    }
    if (i_master >= 0 && (fds[i_master].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = read(master, buf, sizeof(buf));
      if (got > 0) {
        if (write_all(1, buf, (size_t)got) < 0) {
          /* Nobody reads our output any more: keep draining so the process is not blocked. */
        }
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        /* EIO: every holder of the slave side closed it. */
        close(master);
        master = -1;
        if (!exited) {
          waitpid(child, &status, 0);
          exited = 1;
        }
      }
    }
    if (i_stdin >= 0 && master >= 0 && (fds[i_stdin].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = read(0, buf, sizeof(buf));
      if (got > 0) {
        write_all(master, buf, (size_t)got);
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        stdin_open = 0;
      }
    }
    if (i_ctl >= 0 && (fds[i_ctl].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = read(control, ctl + ctl_len, sizeof(ctl) - 1 - ctl_len);
      if (got <= 0 && (got == 0 || (errno != EINTR && errno != EAGAIN))) {
        close(control);
        control = -1;
      } else if (got > 0) {
        ctl_len += (size_t)got;
        char *nl;
        while ((nl = memchr(ctl, '\n', ctl_len)) != NULL) {
          *nl = '\0';
          unsigned r = 0, c = 0;
          if (sscanf(ctl, "%u %u", &r, &c) == 2) {
            rows = r;
            cols = c;
            set_size(master, rows, cols);
          }
          size_t used = (size_t)(nl - ctl) + 1;
          memmove(ctl, nl + 1, ctl_len - used);
          ctl_len -= used;
        }
        if (ctl_len == sizeof(ctl) - 1) ctl_len = 0; /* an overlong line: drop it */
      }
    }
  }

  if (listener >= 0) {
    close(listener);
    unlink(socket_path);
  }
  if (!exited) waitpid(child, &status, 0);
  if (WIFSIGNALED(status)) {
    signal(WTERMSIG(status), SIG_DFL);
    raise(WTERMSIG(status));
    return 128 + WTERMSIG(status);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 125;
}
