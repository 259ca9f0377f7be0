"""`scillm.clients.ids.new_id`: ids as `secrets.token_hex(16)` makes them, never repeated
across blocks, threads or a fork."""

from __future__ import annotations

import os
import re
import threading

from scillm.clients import ids

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_32_hex_digits_and_distinct_across_many_blocks() -> None:
    made = [ids.new_id() for _ in range(5 * ids._BLOCK // ids._ID_BYTES + 7)]
    assert all(HEX32.fullmatch(i) for i in made)
    assert len(set(made)) == len(made)


def test_threads_never_get_the_same_id() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        for _ in range(3000):
            out.append(ids.new_id())

    threads = [threading.Thread(target=draw, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 8 * 3000


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    ids.new_id()  # a block is held, partly handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.close(read)
        os.write(write, "".join(ids.new_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(ids.new_id() for _ in range(4))
    assert len(child) == len(parent) == 4 * 32
    assert {child[i:i + 32] for i in range(0, 128, 32)}.isdisjoint(
        {parent[i:i + 32] for i in range(0, 128, 32)})
