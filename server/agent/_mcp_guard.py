"""The line guard in front of a stdio MCP server (stdlib only; never imported by the mesh).

The mesh starts a stdio MCP server as ``python -I -S -c <this file's text> LIMIT COMMAND
ARGS...``: this process starts COMMAND with its own stdin and stderr, and copies COMMAND's
stdout to its own line by line. The MCP SDK reads a server's stdout by joining a long line
chunk by chunk, on the mesh's event loop and without a bound (quadratic: a 40 MB tool
result held every caller of the gateway for most of a minute). A line longer than LIMIT
bytes is not passed on: in its place goes a JSON-RPC error answering the same request id
(read from the line's head), so the call fails naming the limit and the session goes on.
A line without an id it can read is dropped (its call then times out).

COMMAND dies with this process (PR_SET_PDEATHSIG), and SIGTERM/SIGINT are passed on to it.
"""

import ctypes
import re
import signal
import subprocess
import sys

_ID = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')
_PIECE = 1 << 20


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> None:
    limit = int(sys.argv[1])
    child = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE,
                             preexec_fn=_die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: child.send_signal(number))
    source, out = child.stdout, sys.stdout.buffer
    assert source is not None
    while True:
        line = source.readline(limit + 1)
        if not line:
            break
        if len(line) > limit and not line.endswith(b"\n"):
            found = _ID.search(line[:4096])
            rest = line
            while rest and not rest.endswith(b"\n"):  # the rest of the line, unread
                rest = source.readline(_PIECE)
            if found is None:
                continue
            line = (b'{"jsonrpc":"2.0","id":' + found.group(1) + b',"error":{"code":-32603,'
                    b'"message":"the MCP server\'s reply is over %d bytes"}}\n' % limit)
        try:
            out.write(line)
            out.flush()
        except BrokenPipeError:  # the mesh left
            break
    sys.exit(child.wait())


main()
