"""A warm `coqtop` in the jail, and the exact protocol it is driven by.

What the checker adds to the composed file (`_coqtext.compose`, then `prepare`)
-------------------------------------------------------------------------------
* Right before the stated theorem's sentence, a copy of that sentence under a fresh
  name, closed by ``Proof using. Admitted.``: the *witness* of the stated type. It sits
  where the theorem sits, so sections and modules treat its statement as they treat the
  theorem's, but it abstracts only what the statement itself mentions.
* At the end, a fresh definition (the *marker*) that exists only if Coq loaded the whole
  file. The file goes to a new read-only inbox file per item.

What a worker runs per item (`CoqWorker.judge`), returned to a mark between items
--------------------------------------------------------------------------------
::

    Module Scillm_item_<n>.  Load "<file>".
    End Scillm_item_<n>.  Set Short Module Printing.  Print Module Scillm_item_<n>.
    (or Search _ inside Scillm_item_<n>. when the module nests modules)
    Definition scillm_all_<n> : unit :=
      let _ := (@<stated> : ltac:(let t := type of @<witness> in exact t)) in
      let _ := @<each declaration> in ... tt.
    Print Assumptions scillm_all_<n>.
    Abort All.  Reset <mark>.  Definition <mark> := tt.

The fast path is that one definition: it type-checks only if the stated theorem has the
witness's type, and `Print Assumptions` of it is "Closed under the global context" only if
every declaration is. Otherwise the item is loaded again and each declaration asked about
apart (`_blame`), to say which one failed and why.

Every reply is read exactly. Item text can make Coq print anything (notations can print a
fake prompt or a fake "Closed under the global context"), so each frame of commands ends
with ``Fail Check <fresh nonce>`` and a reply is the output before the prompt that
precedes that nonce's message. Nonces are drawn after the item's text is fixed, so the
text cannot know them; a frame holds several commands only when no item text can appear in
any reply but the last one's.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..jail import Jail
from ._coqtext import Composed, required
from ._process import ProverProcess, make_inbox, put_item
from ._settings import ProveSettings

__all__ = ["OOM", "TAG", "CoqJob", "CoqWorker", "Judgement", "coq_error", "flat_listing",
           "is_closed", "out_of_memory", "prepare"]

_PROMPT = b"</prompt>"
#: Descriptors a worker keeps for other than its leaked Loads (see `CoqWorker.loads`).
_SPARE_FILES = 64
_CLOSED = "Closed under the global context"
#: Coq's own note when Print Assumptions first opens a library's proofs.
_FETCHING = re.compile(r"<infomsg>\s*Fetching opaque proofs from disk for [\w.']+\s*</infomsg>")
TAG = re.compile(r"</?(?:infomsg|warning|prompt)>")
OOM = ("Out of memory", "out of memory")
_NAME = re.compile(r"^([^\W\d][\w'.]*):", re.MULTILINE)
#: What a flat module's short listing holds (a "Module" entry sends the item to Search).
_FLAT_KINDS = frozenset({"Parameter", "Definition", "Inductive", "CoInductive", "Variant"})


def flat_listing(reply: str, module: str) -> list[str] | None:
    """Full names from `Print Module <module>` under Short Module Printing, when the module
    is flat: ``Module M := Struct <kind> <name> ... End``. None for anything else (nested
    modules, or a listing of another shape), which then goes to `Search`. Only names can
    come from the item's text there, and each is one token, so the pairs cannot shift."""
    tokens = TAG.sub(" ", reply).split()
    if tokens[:4] != ["Module", module, ":=", "Struct"] or tokens[-1:] != ["End"]:
        return None
    body = tokens[4:-1]
    if len(body) % 2:
        return None
    names: list[str] = []
    for kind, name in zip(body[::2], body[1::2], strict=True):
        if kind not in _FLAT_KINDS:
            return None
        names.append(f"{module}.{name}")
    return names


def coq_error(reply: str, command: str) -> str:
    """Coq's error on `command`, one of the checker's own commands naming a fresh nonce, in
    its reply ("Error: ..."), or "" when it has none.

    Coq prints the error that stops a command last, after a header that quotes the
    command (``> Load "<inbox>/Item_<nonce>.v".`` and a line of carets). Everything the
    item printed on its way (`Check`, `Print`, `idtac`: untagged, or in ``<infomsg>``)
    comes before it and cannot forge the header, which names the nonce; a message under
    the last header that is not an error (a ``<warning>``) is not one. The error ends at
    the prompt of the frame's next command, if any.
    """
    header = f"\n> {command}\n"
    at = reply.rfind(header)
    if at < 0:
        return ""
    rest = reply[at + len(header):]
    body = rest[rest.find("\n") + 1:] if "\n" in rest else ""  # past the carets' line
    body = TAG.sub("", body.split("<prompt>", 1)[0]).strip()  # up to the next command's
    return body if body.startswith("Error:") else ""


def out_of_memory(error: str) -> bool:
    """Whether `error`, Coq's error on one of the checker's own commands (`coq_error`), is
    Coq's report that its process ran out of memory, and nothing more: OCaml's
    `Out_of_memory`, raised when the item's RLIMIT_AS refuses the heap more, which Coq
    prints as "Error: Out of memory." and nothing else.

    Never a search of the error's text: an error the item raises, or one that quotes it,
    says more than that (``fail "Out of memory"`` is "Error: Tactic failure: Out of
    memory.", a theorem about the string "Out of memory" fails to unify it), and it made
    the item's own FAILED an ERROR, "coq ran out of memory or crashed".
    """
    return " ".join(error.split()) == "Error: Out of memory."


def is_closed(reply: str) -> bool:
    """Whether a `Print Assumptions` reply says "closed", and nothing else."""
    return _FETCHING.sub("", reply).strip() == _CLOSED


@dataclass
class Judgement:
    """What Coq said about one item (before it becomes a verdict)."""

    #: The file loaded to its end and its module closed.
    loaded: bool = False
    #: Coq's own error that stopped the `Load` (or the `End`, when the module did not
    #: close), "Error: ...", or "". Not the whole reply: that holds what the item printed
    #: (a proof that printed "Out of memory" was an ERROR; see `coq_error`).
    load_error: str = ""
    #: Declarations that are not closed (named relative to the item), with Coq's reply.
    open: dict[str, str] = field(default_factory=dict)
    #: The stated theorem: None when not checked; else whether it has the stated type.
    stated_ok: bool | None = None
    #: Whether the stated theorem exists at the end (under the witness's module path).
    stated_found: bool = False
    #: Whether the stated sentence reads with the item's imports alone (no preamble, no
    #: text before it): then the theorem must have that reading's type too.
    clean: bool = False
    #: None when not checked; else whether the theorem has the imports-alone type.
    clean_ok: bool | None = None
    #: Whether the stated sentence reads with the imports and the caller's preamble (a
    #: formalized item's context, which the model's code comes after).
    context: bool = False
    #: None when not checked; else whether the theorem has that reading's type.
    context_ok: bool | None = None


@dataclass(frozen=True)
class CoqJob:
    """One item as a worker runs it."""

    text: str
    stated: str
    nonce: str
    #: The imports and the stated sentence alone, as the clean witness (see `prepare`).
    clean: str = ""
    #: The imports, the caller's preamble and the stated sentence, as the context witness
    #: (a formalized item's; see `prepare`).
    context: str = ""

    @property
    def module(self) -> str:
        return f"Scillm_item_{self.nonce}"

    @property
    def clean_module(self) -> str:
        return f"Scillm_clean_{self.nonce}"

    @property
    def clean_file(self) -> str:
        return f"Clean_{self.nonce}.v"

    @property
    def clean_witness(self) -> str:
        return f"scillm_clean_{self.nonce}"

    @property
    def clean_check(self) -> str:
        return f"scillm_cleanok_{self.nonce}"

    @property
    def context_module(self) -> str:
        return f"Scillm_context_{self.nonce}"

    @property
    def context_file(self) -> str:
        return f"Context_{self.nonce}.v"

    @property
    def context_witness(self) -> str:
        return f"scillm_context_{self.nonce}"

    @property
    def context_check(self) -> str:
        return f"scillm_contextok_{self.nonce}"

    @property
    def file(self) -> str:
        return f"Item_{self.nonce}.v"

    @property
    def witness(self) -> str:
        return f"scillm_stated_{self.nonce}"

    @property
    def marker(self) -> str:
        return f"scillm_loaded_{self.nonce}"


def prepare(composed: Composed, stated_at: tuple[int, int], name_at: int, name: str,
            context_end: int | None = None) -> CoqJob:
    """The file a worker loads: the witness before the stated sentence, the marker last;
    and the clean witness's file: the imports and the stated sentence alone. The witness
    reads the statement where the item put it, after the preamble; the clean witness as
    it reads in Coq with the imports only, so that a preamble that changes what it means
    (`Notation False := True`, a `Number Notation`, `Open Scope Z_scope`, a name of Coq's
    defined again) cannot change what is proved without the check seeing it.

    A formalized item (`context_end`: where the caller's preamble ends and the model's code
    begins) has a third reading, the context witness: the imports and the caller's
    preamble, then the stated sentence, so that the model's code cannot change what the
    context's names mean (its own `double` over the caller's, an `Import` that shadows it)
    without the check seeing it."""
    nonce = secrets.token_hex(8)
    text = composed.text
    start, end = stated_at
    job = CoqJob("", name, nonce)
    sentence = text[start:name_at] + job.witness + text[name_at + len(name):end]
    loaded = (text[:start] + sentence + " Proof using. Admitted.\n" + text[start:]
              + f"\nDefinition {job.marker} := tt.\n")
    clean = (text[:composed.imports_end] + "".join(required(text, composed.imports_end, start))
             + text[start:name_at] + job.clean_witness + text[name_at + len(name):end]
             + " Proof using. Admitted.\n")
    context = ""
    if context_end is not None:
        context = (text[:context_end] + "".join(required(text, context_end, start))
                   + text[start:name_at] + job.context_witness + text[name_at + len(name):end]
                   + " Proof using. Admitted.\n")
    return CoqJob(loaded, name, nonce, clean, context)


class CoqWorker:
    """One long-lived `coqtop -emacs` in the jail, reading items from its inbox."""

    def __init__(self, proc: ProverProcess, inbox: Path, jail: Jail) -> None:
        self._proc = proc
        self._inbox = inbox
        self._jail = jail
        self._mark = f"scillm_mark_{secrets.token_hex(6)}"
        #: Items checked; a worker is retired after `ProveSettings.coq_worker_items`.
        self.items = 0
        #: Files `Load`ed. Coq 8.16's `Load` never closes its file (one descriptor leaked
        #: per Load, loaded whole or not): past the jail's RLIMIT_NOFILE every later item
        #: failed with "Too many open files". `worn_out` says when to retire the worker.
        self.loads = 0

    @property
    def worn_out(self) -> bool:
        """Whether the worker has used up its descriptors on Loads, a margin kept for the
        rest (its own files, the libraries it opens)."""
        return self.loads >= self._jail.settings.open_files - _SPARE_FILES

    @classmethod
    async def start(cls, settings: ProveSettings, jail: Jail) -> CoqWorker:
        inbox = make_inbox("scillm-coq-", settings.scratch_dir)
        try:
            proc = await ProverProcess.spawn([settings.coqtop_path, "-emacs", "-q"], jail=jail,
                                             memory_mb=settings.default_limits.memory_mb,
                                             inbox=inbox)
        except BaseException:
            shutil.rmtree(inbox, ignore_errors=True)
            raise
        worker = cls(proc, inbox, jail)
        try:
            async with asyncio.timeout(settings.start_timeout_s):
                await proc.read_until(_PROMPT)
                setup = ['Remove Search Blacklist "_subterm" "_subproof" "Private_".']
                if settings.coq_warm_libraries:
                    setup.append(f"Require {' '.join(settings.coq_warm_libraries)}.")
                setup.append(f"Definition {worker._mark} := tt.")
                replies = await worker.ask(setup)
                if any("Error" in r for r in replies):
                    raise RuntimeError(f"coqtop could not start: {' '.join(replies)[:500]}")
        except BaseException:
            await worker.kill()
            raise
        return worker

    @property
    def alive(self) -> bool:
        return self._proc.alive

    async def kill(self) -> None:
        await self._proc.kill()
        shutil.rmtree(self._inbox, ignore_errors=True)

    async def ask(self, frames: Sequence[str | tuple[str, ...]]) -> list[str]:
        """Run the commands of `frames`; the reply of each frame, framed by a fresh nonce.

        A frame is one command, or several whose replies may share a frame because no
        text of the item can appear in them but their last one's (the replies of a tuple
        come back together, separated by Coq's prompts). Everything is written at once
        while replies are read, so a long batch cannot deadlock on full pipes.
        """
        nonce = secrets.token_hex(8)
        tags = [f"scillm_sync_{nonce}_{i}_" for i in range(len(frames))]
        text = "".join(f"{c if isinstance(c, str) else chr(10).join(c)}\nFail Check {t}.\n"
                       for c, t in zip(frames, tags, strict=True))
        writer = asyncio.ensure_future(self._proc.send(text))
        # A prover that dies mid-write fails the reads too; that error is the one raised.
        writer.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            replies = [await self._reply(tag) for tag in tags]
        except BaseException:
            writer.cancel()
            raise
        await writer
        return replies

    async def _reply(self, tag: str) -> str:
        chunk = await self._proc.read_until(tag.encode())
        chunk += await self._proc.read_until(_PROMPT)
        at = chunk.index(tag)
        prompt = chunk.rfind("<prompt>", 0, at)
        return chunk[:prompt] if prompt >= 0 else chunk[:at]

    async def judge(self, job: CoqJob, memory_mb: int) -> Judgement:
        """Load `job`, ask Coq about every declaration, return to the mark.

        No reset on an exception (a timeout, a dead prover): the caller kills the worker.
        """
        self._proc.set_memory_limit(memory_mb)
        self.items += 1
        # A new file per item: rewriting one that a jail's mount namespace also holds
        # costs about a millisecond, a new one a tenth of that.
        for old in self._inbox.iterdir():
            old.unlink()
        put_item(self._inbox, job.file, job.text)
        if job.clean:
            put_item(self._inbox, job.clean_file, job.clean)
        if job.context:
            put_item(self._inbox, job.context_file, job.context)
        judgement, found = await self._load(job)
        clean = judgement.clean
        if not judgement.loaded:
            await self._reset()
            return judgement
        witnesses = [n for n in found if n.rsplit(".", 1)[-1] == job.witness]
        names = [n for n in found if n.rsplit(".", 1)[-1] not in (job.witness, job.marker)]
        stated = [(w, f"{w.rsplit('.', 1)[0]}.{job.stated}") for w in witnesses]
        plain = list(stated)
        if clean:  # the theorem must also have the type its statement has in plain Coq
            stated += [(f"{job.clean_module}.{job.clean_witness}", theorem)
                       for _, theorem in plain]
        if judgement.context:  # and the type it has in the caller's context
            stated += [(f"{job.context_module}.{job.context_witness}", theorem)
                       for _, theorem in plain]
        judgement.stated_found = any(s in names for _, s in stated)
        if stated:
            if await self._all_closed(job, names, stated):
                judgement.stated_ok = True
                judgement.clean_ok = True if judgement.clean else None
                judgement.context_ok = True if judgement.context else None
                return judgement
            # Not closed somewhere: load the item again (the fast path reset the worker)
            # and ask about each declaration, to say which one and why.
            await self._load(job)
        await self._blame(job, judgement, names, stated)
        await self._reset()
        return judgement

    async def _load(self, job: CoqJob) -> tuple[Judgement, list[str]]:
        """Load the item into its module; whether it loaded whole, and its names. First,
        when the job has one, the clean witness into a module of its own (kept until the
        reset): whether the stated sentence reads with the imports alone."""
        m = job.module
        inbox = self._jail.inbox_path(self._inbox)
        frames: list[str | tuple[str, ...]] = []
        # The other readings of the stated sentence: (Judgement's field, text, module,
        # file, witness, the definition that says it read).
        readings = [r for r in (
            ("clean", job.clean, job.clean_module, job.clean_file, job.clean_witness,
             job.clean_check),
            ("context", job.context, job.context_module, job.context_file,
             job.context_witness, job.context_check)) if r[1]]
        for _, _, module, file, witness, check in readings:
            frames += [(f"Module {module}.", f'Load "{inbox}/{file}".'),
                       ("Abort All.", f"End {module}."),
                       f"Definition {check} := @{module}.{witness}."]
        frames += [(f"Module {m}.", f'Load "{inbox}/{job.file}".'),
                   (f"End {m}.", "Set Short Module Printing.", f"Print Module {m}.")]
        self.loads += 1 + len(readings)
        *read, load, end = await self.ask(frames)
        judgement = Judgement()
        for i, (field_name, *_, check) in enumerate(readings):
            # Framed by the nonce: a reply that prints the stated type holds the item's
            # text (a binder named `Error` made it read as a failure).
            setattr(judgement, field_name,
                    f"<infomsg>{check} is defined</infomsg>" in read[3 * i + 2])
        # The listing is what follows the frame's last prompt (names are its only text
        # that comes from the item, and no name holds a prompt).
        found = flat_listing(end[end.rfind("</prompt>") + len("</prompt>"):], m)
        if found is None:  # nested modules, or an unexpected listing: ask Search
            search = (await self.ask([f"Search _ inside {m}."]))[0]
            found = [n for n in _NAME.findall(search) if n.startswith(m + ".")]
        closed = f"<infomsg>Module {m} is defined</infomsg>" in end
        judgement.loaded = closed and f"{m}.{job.marker}" in found
        if not judgement.loaded:
            judgement.load_error = (coq_error(load, f'Load "{inbox}/{job.file}".')
                                    or coq_error(end, f"End {m}."))
        return judgement, found

    async def _all_closed(self, job: CoqJob, names: list[str],
                          stated: list[tuple[str, str]]) -> bool:
        """The fast path: one definition that uses every declaration and each stated
        theorem at its witness's type, and one `Print Assumptions` of it. True when Coq
        defined it and found it closed; the worker is back at its mark either way."""
        check = f"scillm_all_{job.nonce}"
        uses = [f"let _ := (@{s} : ltac:(let t := type of @{w} in exact t)) in "
                for w, s in stated] + [f"let _ := @{n} in " for n in names]
        defined, assumptions, cleanup = await self.ask(
            [f"Definition {check} : unit := {''.join(uses)}tt.",
             f"Print Assumptions {check}.", self._cleanup()])
        self._check_cleanup(cleanup)
        return f"<infomsg>{check} is defined</infomsg>" in defined and is_closed(assumptions)

    async def _blame(self, job: CoqJob, judgement: Judgement, names: list[str],
                     stated: list[tuple[str, str]]) -> None:
        """The slow path, for an item that is not closed: each declaration's own
        `Print Assumptions`, and each stated theorem's type checked apart."""
        m = job.module
        commands = [f"Print Assumptions {n}." for n in names]
        for i, (witness, theorem) in enumerate(stated):
            commands += [f"Definition scillm_same_{job.nonce}_{i} : "
                         f"ltac:(let t := type of @{witness} in exact t) := @{theorem}.",
                         f"Print Assumptions scillm_same_{job.nonce}_{i}."]
        replies = await self.ask(commands)
        for name, reply in zip(names, replies, strict=False):
            if not is_closed(reply):  # names relative to the item, for messages
                judgement.open[name.removeprefix(m + ".")] = reply.replace(m + ".", "")
        same = replies[len(names) + 1::2]
        kinds = [w.split(".", 1)[0] for w, _ in stated]  # the witness's module
        plain = [r for r, k in zip(same, kinds, strict=True)
                 if k not in (job.clean_module, job.context_module)]
        judgement.stated_ok = bool(plain) and all(is_closed(r) for r in plain)
        for module, attr in ((job.clean_module, "clean_ok"), (job.context_module, "context_ok")):
            if module in kinds:
                setattr(judgement, attr, all(is_closed(r) for r, k in
                                             zip(same, kinds, strict=True) if k == module))

    def _cleanup(self) -> tuple[str, ...]:
        return ("Abort All.", f"Reset {self._mark}.", f"Definition {self._mark} := tt.")

    def _check_cleanup(self, reply: str) -> None:
        """A worker that could not return to its mark is not reused."""
        if "Error" in reply or any(s in reply for s in OOM):
            self._proc.kill_now()

    async def _reset(self) -> None:
        """Back to the mark; a worker that cannot get there is killed."""
        if self.alive:
            self._check_cleanup((await self.ask([self._cleanup()]))[0])
