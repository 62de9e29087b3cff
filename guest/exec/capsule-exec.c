/*
 * capsule-exec: starts one process inside a running container (docker exec without a terminal),
 * doing the part of `crun exec` an exec needs: join the container's namespaces and cgroup, take
 * the process's rlimits, credentials and capabilities, change to its working directory, and exec.
 *
 * Why it exists: under TCG every process creation and every dynamic link costs tens of
 * milliseconds. `crun exec` is a dynamically linked program that parses the container's state and
 * config, clones twice and writes a pid file the agent must watch for; this static program does
 * the same work with one fork, and reports the pid on a pipe. (Terminals still go through crun:
 * capsule-console carries its console socket.) What it sets is what crun sets for the process
 * (compared in integration/cli-exec.test.ts): Cap*, NoNewPrivs, Groups, rlimits, oom_score_adj,
 * the container's cgroup, no new session.
 *
 * Usage: capsule-exec --pid INIT_PID [--ns mnt|uts|pid|ipc|net|cgroup]... --uid N --gid N
 *          [--groups G,G...] --cwd DIR [--env K=V]... [--cap-bounding HEX] [--cap-effective HEX]
 *          [--cap-permitted HEX] [--cap-inheritable HEX] [--cap-ambient HEX]
 *          [--rlimit RESOURCE:SOFT:HARD]... [--no-new-privs] [--oom-score-adj N] [--umask OCTAL]
 *          -- ARGS...
 *   Soft/hard limits are decimal; "-1" is unlimited. Capability sets are hex bit masks.
 *
 * Stdio 0-2 become the process's. Fd 3 is the status pipe: one line, then it is closed:
 *   "pid N"       the process runs (N in this program's pid namespace, the guest's); this program
 *                 waits for it and exits with its status (128+signal when a signal ended it).
 *   "error MSG"   it could not be started; MSG is worded as crun words the same failure (the agent
 *                 translates crun's messages into dockerd's). Exit status 1.
 * A failure after exec(2) was attempted and the kernel refused the file itself (exec format
 * error, missing ELF interpreter) is, as with crun, the process's own: "exec: <error>" on its
 * stderr and exit status 1, after "pid N".
 * Exit status 2: bad usage (nothing started, message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define STATUS_FD 3
#define MAX_LIST 256
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct rlimit_opt {
  int resource;
  struct rlimit limit;
};

struct options {
  pid_t init_pid;
  const char *ns[8];
  int ns_count;
  uid_t uid;
  gid_t gid;
  gid_t groups[MAX_LIST];
  int group_count;
  const char *cwd;
  char *env[MAX_LIST * 16 + 1];
  int env_count;
  int have_caps;
  uint64_t cap_bounding, cap_effective, cap_permitted, cap_inheritable, cap_ambient;
  struct rlimit_opt rlimits[RLIM_NLIMITS];
  int rlimit_count;
  int no_new_privs;
  int oom_score_adj_set;
  int oom_score_adj;
  int umask_set;
  mode_t umask_value;
  char **args;
};

static void usage(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("capsule-exec: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static long long parse_number(const char *s, int base, const char *what) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, base);
  if (errno != 0 || end == s || *end != '\0') usage("invalid %s: %s", what, s);
  return v;
}

static uint64_t parse_mask(const char *s) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 16);
  if (errno != 0 || end == s || *end != '\0') usage("invalid capability mask: %s", s);
  return (uint64_t)v;
}

static rlim_t parse_rlim(const char *s) {
  if (strcmp(s, "-1") == 0) return RLIM_INFINITY;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') usage("invalid rlimit value: %s", s);
  return (rlim_t)v;
}

static void parse_args(int argc, char **argv, struct options *o) {
  memset(o, 0, sizeof(*o));
  o->uid = (uid_t)-1;
  o->gid = (gid_t)-1;
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "--no-new-privs") == 0) {
      o->no_new_privs = 1;
      continue;
    }
    if (i + 1 >= argc) usage("%s needs a value", a);
    const char *v = argv[++i];
    if (strcmp(a, "--pid") == 0) {
      o->init_pid = (pid_t)parse_number(v, 10, "pid");
    } else if (strcmp(a, "--ns") == 0) {
      if (o->ns_count == 8) usage("too many --ns");
      o->ns[o->ns_count++] = v;
    } else if (strcmp(a, "--uid") == 0) {
      o->uid = (uid_t)parse_number(v, 10, "uid");
    } else if (strcmp(a, "--gid") == 0) {
      o->gid = (gid_t)parse_number(v, 10, "gid");
    } else if (strcmp(a, "--groups") == 0) {
      char *copy = strdup(v);
      for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->group_count == MAX_LIST) usage("too many groups");
        o->groups[o->group_count++] = (gid_t)parse_number(tok, 10, "group");
      }
      free(copy);
    } else if (strcmp(a, "--cwd") == 0) {
      o->cwd = v;
    } else if (strcmp(a, "--env") == 0) {
      if (o->env_count == MAX_LIST * 16) usage("too many --env");
      o->env[o->env_count++] = (char *)v;
    } else if (strcmp(a, "--cap-bounding") == 0) {
      o->have_caps = 1;
      o->cap_bounding = parse_mask(v);
    } else if (strcmp(a, "--cap-effective") == 0) {
      o->have_caps = 1;
      o->cap_effective = parse_mask(v);
    } else if (strcmp(a, "--cap-permitted") == 0) {
      o->have_caps = 1;
      o->cap_permitted = parse_mask(v);
    } else if (strcmp(a, "--cap-inheritable") == 0) {
      o->have_caps = 1;
      o->cap_inheritable = parse_mask(v);
    } else if (strcmp(a, "--cap-ambient") == 0) {
      o->have_caps = 1;
      o->cap_ambient = parse_mask(v);
    } else if (strcmp(a, "--rlimit") == 0) {
      char *copy = strdup(v);
      char *soft = strchr(copy, ':');
      char *hard = soft ? strchr(soft + 1, ':') : NULL;
      if (!soft || !hard) usage("invalid --rlimit: %s", v);
      *soft++ = '\0';
      *hard++ = '\0';
      if (o->rlimit_count == RLIM_NLIMITS) usage("too many --rlimit");
      struct rlimit_opt *r = &o->rlimits[o->rlimit_count++];
      r->resource = (int)parse_number(copy, 10, "rlimit resource");
      r->limit.rlim_cur = parse_rlim(soft);
      r->limit.rlim_max = parse_rlim(hard);
      free(copy);
    } else if (strcmp(a, "--oom-score-adj") == 0) {
      o->oom_score_adj_set = 1;
      o->oom_score_adj = (int)parse_number(v, 10, "oom_score_adj");
    } else if (strcmp(a, "--umask") == 0) {
      o->umask_set = 1;
      o->umask_value = (mode_t)parse_number(v, 8, "umask");
    } else {
      usage("unknown option %s", a);
    }
  }
  o->env[o->env_count] = NULL;
  if (o->init_pid <= 0) usage("--pid is required");
  if (o->uid == (uid_t)-1 || o->gid == (gid_t)-1) usage("--uid and --gid are required");
  if (!o->cwd) usage("--cwd is required");
  if (i >= argc) usage("no command after --");
  o->args = &argv[i];
}

/* Writes all of buf (best effort: the reader may be gone). */
static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    buf += n;
    len -= (size_t)n;
  }
}

/* In the child: reports a failure to start on the error pipe (crun's wording) and exits. */
static int error_pipe = -1;
static void fail(const char *fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof(buf)) n = sizeof(buf) - 1;
  write_all(error_pipe, buf, (size_t)n);
  _exit(1);
}

static int ns_flag(const char *name) {
  if (strcmp(name, "mnt") == 0) return CLONE_NEWNS;
  if (strcmp(name, "uts") == 0) return CLONE_NEWUTS;
  if (strcmp(name, "pid") == 0) return CLONE_NEWPID;
  if (strcmp(name, "ipc") == 0) return CLONE_NEWIPC;
  if (strcmp(name, "net") == 0) return CLONE_NEWNET;
  if (strcmp(name, "cgroup") == 0) return CLONE_NEWCGROUP;
  usage("unknown namespace %s", name);
  return 0;
}

/*
 * Opens the container's cgroup.procs: the init's cgroup (its "0::" line in /proc/PID/cgroup) under
 * the cgroup2 mount at /sys/fs/cgroup, or -1 with errno set.
 */
static int open_init_cgroup(pid_t pid) {
  char path[PATH_MAX];
  snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  char line[PATH_MAX];
  char cgroup[PATH_MAX] = "";
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, "0::", 3) == 0) {
      snprintf(cgroup, sizeof(cgroup), "%s", line + 3);
      cgroup[strcspn(cgroup, "\n")] = '\0';
      break;
    }
  }
  fclose(f);
  if (cgroup[0] != '/') {
    errno = ENOENT;
    return -1;
  }
  snprintf(path, sizeof(path), "/sys/fs/cgroup%s/cgroup.procs", strcmp(cgroup, "/") == 0 ? "" : cgroup);
  return open(path, O_WRONLY | O_CLOEXEC);
}

static int capset_all(uint64_t effective, uint64_t permitted, uint64_t inheritable) {
  struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  data[0].effective = (uint32_t)effective;
  data[1].effective = (uint32_t)(effective >> 32);
  data[0].permitted = (uint32_t)permitted;
  data[1].permitted = (uint32_t)(permitted >> 32);
  data[0].inheritable = (uint32_t)inheritable;
  data[1].inheritable = (uint32_t)(inheritable >> 32);
  return (int)syscall(SYS_capset, &header, data);
}

static int last_cap(void) {
  int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return CAP_LAST_CAP;
  char buf[16] = "";
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return CAP_LAST_CAP;
  return atoi(buf);
}

/* Whether `path` names a regular file this process may execute; errno says why not. */
static int executable(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return 0;
  if (!S_ISREG(st.st_mode)) {
    errno = EACCES;
    return 0;
  }
  return access(path, X_OK) == 0;
}

/* crun's lookup of args[0]: as given when it has a '/', else the first executable in PATH. */
static const char *find_executable(const char *name, const char *path_value, char *buf, size_t size) {
  if (strchr(name, '/')) {
    if (executable(name)) return name;
    if (errno == ENOENT || errno == ENOTDIR)
      fail("executable file `%s` not found in $PATH: No such file or directory", name);
    fail("open executable: %s", strerror(errno));
  }
  int denied = 0;
  const char *p = path_value;
  while (1) {
    const char *colon = strchr(p, ':');
    size_t len = colon ? (size_t)(colon - p) : strlen(p);
    /* An empty PATH entry is the working directory, as for execvp. */
    if (len == 0)
      snprintf(buf, size, "%s", name);
    else
      snprintf(buf, size, "%.*s/%s", (int)len, p, name);
    if (executable(buf)) return buf;
    if (errno == EACCES) denied = 1;
    if (!colon) break;
    p = colon + 1;
  }
  if (denied) fail("open executable: %s", strerror(EACCES));
  fail("executable file `%s` not found in $PATH: No such file or directory", name);
  return NULL;
}

/* The child: joined the namespaces already (the parent did); becomes the process. */
static void become_process(const struct options *o, int cgroup_fd, int last) {
  if (cgroup_fd >= 0 && write(cgroup_fd, "0", 1) != 1) fail("join the container's cgroup: %s", strerror(errno));
  if (cgroup_fd >= 0) close(cgroup_fd);
  for (int i = 0; i < o->rlimit_count; i++) {
    if (setrlimit(o->rlimits[i].resource, &o->rlimits[i].limit) != 0)
      fail("setrlimit %d: %s", o->rlimits[i].resource, strerror(errno));
  }
  if (chdir(o->cwd) != 0) fail("chdir `%s`: %s", o->cwd, strerror(errno));
  if (o->have_caps) {
    for (int cap = 0; cap <= last; cap++) {
      if (!(o->cap_bounding & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
        fail("drop capability %d from the bounding set: %s", cap, strerror(errno));
    }
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) fail("keep capabilities: %s", strerror(errno));
  }
  if (setgroups((size_t)o->group_count, o->groups) != 0) fail("setgroups: %s", strerror(errno));
  if (setresgid(o->gid, o->gid, o->gid) != 0) fail("setgid: %s", strerror(errno));
  if (setresuid(o->uid, o->uid, o->uid) != 0) fail("setuid: %s", strerror(errno));
  if (o->have_caps) {
    if (capset_all(o->cap_effective, o->cap_permitted, o->cap_inheritable) != 0)
      fail("set capabilities: %s", strerror(errno));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
      fail("clear ambient capabilities: %s", strerror(errno));
    for (int cap = 0; cap <= last; cap++) {
      if ((o->cap_ambient & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0)
        fail("raise ambient capability %d: %s", cap, strerror(errno));
    }
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) fail("keep capabilities: %s", strerror(errno));
  }
  if (o->umask_set) umask(o->umask_value);
  if (o->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    fail("no_new_privs: %s", strerror(errno));

  const char *path_value = DEFAULT_PATH;
  for (int i = 0; i < o->env_count; i++) {
    if (strncmp(o->env[i], "PATH=", 5) == 0) path_value = o->env[i] + 5;
  }
  char found[PATH_MAX];
  const char *file = find_executable(o->args[0], path_value, found, sizeof(found));
  execve(file, o->args, (char *const *)o->env);
  /* The file is there and executable, and the kernel refused it: the process's own failure. */
  int err = errno;
  char msg[256];
  int n = snprintf(msg, sizeof(msg), "exec: %s\n", strerror(err));
  write_all(2, msg, (size_t)n);
  close(error_pipe);
  _exit(1);
}

int main(int argc, char **argv) {
  struct options o;
  parse_args(argc, argv, &o);
  if (fcntl(STATUS_FD, F_SETFD, FD_CLOEXEC) != 0) usage("no status pipe on fd %d", STATUS_FD);
  int last = last_cap();

  char status[4200];
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    int n = snprintf(status, sizeof(status), "error pipe: %s\n", strerror(errno));
    write_all(STATUS_FD, status, (size_t)n);
    return 1;
  }

  /* Everything that needs the guest's view comes first: the cgroup and the namespace files. */
  int cgroup_fd = open_init_cgroup(o.init_pid);
  if (cgroup_fd < 0) {
    int n = snprintf(status, sizeof(status), "error open the cgroup of pid %d: %s\n", (int)o.init_pid, strerror(errno));
    write_all(STATUS_FD, status, (size_t)n);
    return 1;
  }
  int ns_fds[8];
  for (int i = 0; i < o.ns_count; i++) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)o.init_pid, o.ns[i]);
    ns_fds[i] = open(path, O_RDONLY | O_CLOEXEC);
    if (ns_fds[i] < 0) {
      int n = snprintf(status, sizeof(status), "error open %s: %s\n", path, strerror(errno));
      write_all(STATUS_FD, status, (size_t)n);
      return 1;
    }
  }
  if (o.oom_score_adj_set) {
    /* Set on this process and inherited by the child: the container's /proc need not be used. */
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    char buf[16];
    int n = snprintf(buf, sizeof(buf), "%d", o.oom_score_adj);
    if (fd < 0 || write(fd, buf, (size_t)n) != n) {
      n = snprintf(status, sizeof(status), "error oom_score_adj: %s\n", strerror(errno));
      write_all(STATUS_FD, status, (size_t)n);
      return 1;
    }
    close(fd);
  }
  /* The mount namespace last: the others' files were opened in the guest's. */
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < o.ns_count; i++) {
      int flag = ns_flag(o.ns[i]);
      if ((flag == CLONE_NEWNS) != (pass == 1)) continue;
      if (setns(ns_fds[i], flag) != 0) {
        int n = snprintf(status, sizeof(status), "error setns %s: %s\n", o.ns[i], strerror(errno));
        write_all(STATUS_FD, status, (size_t)n);
        return 1;
      }
      close(ns_fds[i]);
    }
  }

  pid_t child = fork();
  if (child < 0) {
    int n = snprintf(status, sizeof(status), "error fork: %s\n", strerror(errno));
    write_all(STATUS_FD, status, (size_t)n);
    return 1;
  }
  if (child == 0) {
    close(pipefd[0]);
    error_pipe = pipefd[1];
    become_process(&o, cgroup_fd, last);
  }
  close(pipefd[1]);
  close(cgroup_fd);

  /* The error pipe closes on a successful exec (O_CLOEXEC), or carries why the start failed. */
  char err[4096];
  size_t got = 0;
  while (got < sizeof(err) - 1) {
    ssize_t n = read(pipefd[0], err + got, sizeof(err) - 1 - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  err[got] = '\0';
  close(pipefd[0]);
  int n = got > 0 ? snprintf(status, sizeof(status), "error %s\n", err)
                  : snprintf(status, sizeof(status), "pid %d\n", (int)child);
  write_all(STATUS_FD, status, (size_t)n);
  close(STATUS_FD);

  int wstatus = 0;
  while (waitpid(child, &wstatus, 0) < 0) {
    if (errno != EINTR) return 1;
  }
  if (got > 0) return 1;
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return WEXITSTATUS(wstatus);
}
