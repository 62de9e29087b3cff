"""A FAKE crun for guest/agent/terminal.test.ts: `run` and `exec` with --console-socket do what crun
does for a process with a terminal as far as the agent can see (a pty, the process on its slave
side, the master sent over the console socket with SCM_RIGHTS, the --pid-file written once the
process runs, exit with its status), without any container: the process is a host command run with
the spec's args, env and cwd. An args[0] starting with "nosuch" fails as crun does (log, status 1,
no pid file).

Usage: fake-crun-console.py [--log=file:LOG] [--log-format=json] [--root DIR] run|exec ...
"""
import json
import os
import pty
import socket
import sys

argv = sys.argv[1:]


def opt(name):
    return argv[argv.index(name) + 1] if name in argv else None


log = next((a[len("--log=file:"):] for a in argv if a.startswith("--log=file:")), None)
if "exec" in argv:
    with open(opt("--process")) as f:
        proc = json.load(f)
else:
    with open(os.path.join(opt("--bundle"), "config.json")) as f:
        proc = json.load(f)["process"]
sock_path = opt("--console-socket")
if not proc.get("terminal") or not sock_path:
    sys.stderr.write("fake crun: only terminal processes with --console-socket\n")
    sys.exit(1)
args = proc["args"]
if args[0].startswith("nosuch"):
    msg = "executable file `%s` not found in $PATH: No such file or directory" % args[0]
    with open(log, "w") as f:
        f.write(json.dumps({"msg": msg, "level": "error"}) + "\n")
    sys.stderr.write(msg + "\n")
    sys.exit(1)
env = dict(e.split("=", 1) for e in proc.get("env", []))
env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
pid, master = pty.fork()
if pid == 0:
    # crun lets the process run only after the console went out; the agent's side sets the size
    # on receipt: leave it that moment.
    import time

    time.sleep(0.5)
    os.chdir(proc.get("cwd") or "/")
    os.execvpe(args[0], args, env)
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sock_path)
    socket.send_fds(s, [b"m"], [master])
os.close(master)
with open(opt("--pid-file"), "w") as f:
    f.write(str(pid))
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
