"""A FAKE OCI runtime for capsule-console's tests: it does what `crun run --console-socket` does
for the console (creates a pty, runs the command on its slave side, sends the master over the
console socket with SCM_RIGHTS) and nothing else (no container). Exits with the command's status.

Usage: fake-runtime.py SOCKET COMMAND ARGS...
"""
import os
import pty
import socket
import sys

sock_path, command = sys.argv[1], sys.argv[2:]
pid, master = pty.fork()
if pid == 0:
    os.execvp(command[0], command)
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sock_path)
    socket.send_fds(s, [b"m"], [master])
os.close(master)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
