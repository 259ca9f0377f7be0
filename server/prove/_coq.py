"""The `coq` backend: warm `coqtop` workers in the jail; Coq itself judges every item.

What the checker adds to the composed file (`_coqtext.compose`)
---------------------------------------------------------------
* Right before the stated theorem's sentence, a copy of that sentence under a fresh
  name, closed by ``Proof using. Admitted.``: the *witness* of the stated type. It sits
  where the theorem sits, so sections and modules treat its statement as they treat the
  theorem's, but it abstracts only what the statement itself mentions.
* At the end, a fresh definition that exists only if Coq loaded the whole file.

What a worker runs (one warm ``coqtop -emacs``, returned to a mark between items)
---------------------------------------------------------------------------------
::

    Module Scillm_<n>.  Load "<file>".  End Scillm_<n>.  Search _ inside Scillm_<n>.
    Print Assumptions <each name Search lists>.
    Definition scillm_same_<n> : <the witness's type> := @<the stated theorem>.
    Print Assumptions scillm_same_<n>.
    Abort All.  Reset <mark>.

PROVED requires all of:

* the whole file loaded and the module closed (no error, no proof or section left open);
* every declaration of the item (nested modules, closed sections, instances, Program
  obligations included) is "Closed under the global context": no axiom, parameter,
  conjecture, admitted lemma or obligation, and none relies on switched-off guard,
  positivity or universe checking (Coq lists those as assumptions too);
* the stated theorem exists at the end under its name with the stated type:
  ``scillm_same_<n>`` must type-check and be closed. A theorem whose type changed when
  its section closed (it used a section hypothesis) is not the stated one.

Every decision is read from Coq's own replies, compared exactly. Item text can make Coq
print anything (notations can print a fake prompt or a fake "Closed under the global
context"), so each command is followed by ``Fail Check <fresh nonce>`` and a reply is the
output before the prompt that precedes that nonce's message. Nonces are drawn after the
item's text is fixed, so the text cannot know them.

coqtop reports errors of a ``Load`` without a position, so a file that does not load is
compiled once more by ``coqc`` (in the jail too) to obtain located diagnostics.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..jail import Jail
from ._backend import probe_version
from ._coqtext import Composed, compose, declarations, locate, parse_messages, stated_theorem
from ._pool import WorkerPool
from ._process import ProverProcess, make_inbox, put_item, run_once
from ._settings import ProveSettings
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["CoqBackend", "CoqWorker", "Judgement"]

_PROMPT = b"</prompt>"
_CLOSED = "Closed under the global context"
#: Coq's own note when Print Assumptions first opens a library's proofs.
_FETCHING = re.compile(r"<infomsg>\s*Fetching opaque proofs from disk for [\w.']+\s*</infomsg>")
_TAG = re.compile(r"</?(?:infomsg|warning|prompt)>")
_OOM = ("Out of memory", "out of memory")
_NAME = re.compile(r"^([^\W\d][\w'.]*):", re.MULTILINE)
#: What a flat module's short listing holds (a "Module" entry sends the item to Search).
_FLAT_KINDS = frozenset({"Parameter", "Definition", "Inductive", "CoInductive", "Variant"})

INSTRUCTIONS = """\
You write Coq 8.16 proofs checked by coqc.
Reply with one fenced code block (```coq ... ```) holding a complete Coq file: the
`Require Import` lines you need, then `Theorem <name> : <statement>.` and its proof
`Proof. ... Qed.` No `Admitted`, `admit`, `Axiom`, `Parameter` or `Hypothesis`: the
checker rejects any declaration that depends on an assumption, and judges the first
theorem of the file with exactly the type it states."""


def flat_listing(reply: str, module: str) -> list[str] | None:
    """Full names from `Print Module <module>` under Short Module Printing, when the module
    is flat: ``Module M := Struct <kind> <name> ... End``. None for anything else (nested
    modules, or a listing of another shape), which then goes to `Search`. Only names can
    come from the item's text there, and each is one token, so the pairs cannot shift."""
    tokens = _TAG.sub(" ", reply).split()
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


def is_closed(reply: str) -> bool:
    """Whether a `Print Assumptions` reply says "closed", and nothing else."""
    return _FETCHING.sub("", reply).strip() == _CLOSED


@dataclass
class Judgement:
    """What Coq said about one item (before it becomes a verdict)."""

    #: The file loaded to its end and its module closed.
    loaded: bool = False
    #: Reply of the `Load` (and of `End`, when the module did not close).
    load_reply: str = ""
    #: Declarations that are not closed (named relative to the item), with Coq's reply.
    open: dict[str, str] = field(default_factory=dict)
    #: The stated theorem: None when not checked; else whether it has the stated type.
    stated_ok: bool | None = None
    #: Whether the stated theorem exists at the end (under the witness's module path).
    stated_found: bool = False


@dataclass(frozen=True)
class CoqJob:
    """One item as a worker runs it."""

    text: str
    stated: str
    nonce: str

    @property
    def module(self) -> str:
        return f"Scillm_item_{self.nonce}"

    @property
    def file(self) -> str:
        return f"Item_{self.nonce}.v"

    @property
    def witness(self) -> str:
        return f"scillm_stated_{self.nonce}"

    @property
    def marker(self) -> str:
        return f"scillm_loaded_{self.nonce}"


def prepare(composed: Composed, stated_at: tuple[int, int], name_at: int, name: str
            ) -> CoqJob:
    """The file a worker loads: the witness before the stated sentence, the marker last."""
    nonce = secrets.token_hex(8)
    text = composed.text
    start, end = stated_at
    job = CoqJob("", name, nonce)
    sentence = text[start:name_at] + job.witness + text[name_at + len(name):end]
    loaded = (text[:start] + sentence + " Proof using. Admitted.\n" + text[start:]
              + f"\nDefinition {job.marker} := tt.\n")
    return CoqJob(loaded, name, nonce)


class CoqWorker:
    """One long-lived `coqtop -emacs` in the jail, reading items from its inbox."""

    def __init__(self, proc: ProverProcess, inbox: Path, jail: Jail) -> None:
        self._proc = proc
        self._inbox = inbox
        self._jail = jail
        self._mark = f"scillm_mark_{secrets.token_hex(6)}"
        #: Items checked; a worker is retired after `ProveSettings.coq_worker_items`.
        self.items = 0

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
        judgement, found = await self._load(job)
        if not judgement.loaded:
            await self._reset()
            return judgement
        witnesses = [n for n in found if n.rsplit(".", 1)[-1] == job.witness]
        names = [n for n in found if n.rsplit(".", 1)[-1] not in (job.witness, job.marker)]
        stated = [(w, f"{w.rsplit('.', 1)[0]}.{job.stated}") for w in witnesses]
        judgement.stated_found = any(s in names for _, s in stated)
        if stated:
            if await self._all_closed(job, names, stated):
                judgement.stated_ok = True
                return judgement
            # Not closed somewhere: load the item again (the fast path reset the worker)
            # and ask about each declaration, to say which one and why.
            await self._load(job)
        await self._blame(job, judgement, names, stated)
        await self._reset()
        return judgement

    async def _load(self, job: CoqJob) -> tuple[Judgement, list[str]]:
        """Load the item into its module; whether it loaded whole, and its names."""
        m = job.module
        where = f"{self._jail.inbox_path(self._inbox)}/{job.file}"
        load, end = await self.ask(
            [(f"Module {m}.", f'Load "{where}".'),
             (f"End {m}.", "Set Short Module Printing.", f"Print Module {m}.")])
        judgement = Judgement(load_reply=load)
        # The listing is what follows the frame's last prompt (names are its only text
        # that comes from the item, and no name holds a prompt).
        found = flat_listing(end[end.rfind("</prompt>") + len("</prompt>"):], m)
        if found is None:  # nested modules, or an unexpected listing: ask Search
            search = (await self.ask([f"Search _ inside {m}."]))[0]
            found = [n for n in _NAME.findall(search) if n.startswith(m + ".")]
        closed = f"<infomsg>Module {m} is defined</infomsg>" in end
        judgement.loaded = closed and f"{m}.{job.marker}" in found
        if not judgement.loaded:
            judgement.load_reply = load if closed else f"{load}\n{end}"
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
        judgement.stated_ok = bool(same) and all(is_closed(r) for r in same)

    def _cleanup(self) -> tuple[str, ...]:
        return ("Abort All.", f"Reset {self._mark}.", f"Definition {self._mark} := tt.")

    def _check_cleanup(self, reply: str) -> None:
        """A worker that could not return to its mark is not reused."""
        if "Error" in reply or any(s in reply for s in _OOM):
            self._proc.kill_now()

    async def _reset(self) -> None:
        """Back to the mark; a worker that cannot get there is killed."""
        if self.alive:
            self._check_cleanup((await self.ask([self._cleanup()]))[0])


class CoqBackend:
    """Coq behind the `Backend` interface."""

    name = "coq"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._jail: Jail | None = None
        self._pool = WorkerPool(self._new_worker, settings.coq_pool_size)

    @property
    def jail(self) -> Jail:
        if self._jail is None:
            raise RuntimeError("the coq backend is not started")
        return self._jail

    async def _new_worker(self) -> CoqWorker:
        return await CoqWorker.start(self._settings, self.jail)

    async def info(self) -> BackendInfo:
        if self._info is None:
            self._info = await probe_version(self.name, [self._settings.coqc_path, "--version"],
                                             self.jail)
        return self._info

    def source_of(self, obligation: Obligation) -> str:
        return self._compose(obligation).text

    @staticmethod
    def _compose(obligation: Obligation) -> Composed:
        ob = obligation
        return compose(ob.imports, ob.preamble, ob.statement, ob.proof)

    def instructions(self) -> str:
        return INSTRUCTIONS

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        composed = self._compose(obligation)
        source = composed.text
        decl = stated_theorem(composed)
        if decl is None:
            return CheckOutcome(Verdict.FAILED, source, (Diagnostic(
                "error", "no Theorem, Lemma, Fact, Remark, Corollary, Proposition, Property "
                "or Example found in the statement to check"),), message="no theorem found")
        job = prepare(composed, decl.sentence, decl.name_at, decl.name)
        async with self._pool.lease() as worker:
            try:
                async with asyncio.timeout(limits.timeout_s):
                    judgement = await worker.judge(job, limits.memory_mb)
            except TimeoutError:
                await worker.kill()
                return CheckOutcome(Verdict.TIMEOUT, source,
                                    message=f"coqtop killed after {limits.timeout_s:g} s")
            except EOFError as exc:
                await worker.kill()
                return _crashed(source, limits, str(exc))
            if worker.items >= self._settings.coq_worker_items:
                await worker.kill()  # retired: the pool starts a fresh one
        if any(s in judgement.load_reply for s in _OOM):
            return _crashed(source, limits, judgement.load_reply)
        if not judgement.loaded:
            return await self._diagnose(source, judgement.load_reply, limits)
        return _verdict(source, decl.name, decl.name_at, judgement)

    async def _diagnose(self, source: str, warm_error: str, limits: Limits) -> CheckOutcome:
        """FAILED with diagnostics located by a cold `coqc` run of the same source."""
        with tempfile.TemporaryDirectory(prefix="scillm-coqc-",
                                         dir=self._settings.scratch_dir) as tmp:
            inbox = make_inbox("item-", Path(tmp))
            put_item(inbox, "Item.v", source)
            where = self.jail.inbox_path(inbox)
            output = "/tmp/Item.vo" if self.jail.isolation == "bubblewrap" else f"{tmp}/Item.vo"
            try:
                result = await run_once([self._settings.coqc_path, "-q", "-o", output,
                                         f"{where}/Item.v"], jail=self.jail,
                                        timeout_s=limits.timeout_s, memory_mb=limits.memory_mb,
                                        inbox=inbox)
                diagnostics = parse_messages(result.output, source)
            except TimeoutError:
                diagnostics = []
        errors = [d for d in diagnostics if d.severity == "error"]
        if not errors:
            text = " ".join(_TAG.sub("", warm_error).split())
            message = text.split("Error:", 1)[-1].strip()[:500] if "Error:" in text else (
                "the file did not load to its end, or left a proof, section or module open")
            errors = [Diagnostic("error", message)]
            diagnostics = [*diagnostics, *errors]
        return CheckOutcome(Verdict.FAILED, source, tuple(diagnostics),
                            message=errors[0].message)

    async def start(self, *, prewarm: bool, jail: Jail) -> None:
        self._jail = jail
        if prewarm and (await self.info()).available:
            await self._pool.prewarm()

    async def close(self) -> None:
        await self._pool.close()

    @property
    def pool(self) -> WorkerPool[CoqWorker]:
        return self._pool


def _verdict(source: str, stated: str, stated_at: int, judgement: Judgement) -> CheckOutcome:
    """PROVED, or FAILED with one diagnostic per declaration Coq did not accept."""
    decls = {d.name: d for d in declarations(source)}
    diagnostics: list[Diagnostic] = []
    for full, reply in judgement.open.items():
        short = full.rsplit(".", 1)[-1]
        assumed = assumptions(reply)
        if short in assumed or full in assumed:
            message = f"{short} is assumed (an axiom, parameter or admitted proof), not proved"
        else:
            message = f"{short} depends on assumptions: {', '.join(assumed) or reply.strip()}"
        decl = decls.get(short)
        if decl is None:
            diagnostics.append(Diagnostic("error", message))
        else:
            line, col = locate(source, decl.name_at)
            diagnostics.append(Diagnostic("error", message, line, col, line, col + len(short)))
    if judgement.stated_ok is not True and not any(
            full.rsplit(".", 1)[-1] == stated for full in judgement.open):
        line, col = locate(source, stated_at)
        message = (f"{stated} does not have the stated type at the end of the source (a "
                   "section hypothesis it used was discharged into it, or it was stated "
                   "again)"
                   if judgement.stated_found else
                   f"{stated} is not in the environment at the end of the source (stated "
                   "inside a module type or functor, or removed)")
        diagnostics.insert(0, Diagnostic("error", message, line, col, line, col + len(stated)))
    if diagnostics:
        diagnostics.sort(key=lambda d: (d.line is None, d.line or 0, d.column or 0))
        return CheckOutcome(Verdict.FAILED, source, tuple(diagnostics),
                            message=diagnostics[0].message)
    return CheckOutcome(Verdict.PROVED, source, message=(
        f"{stated} has the stated type; every declaration is closed under the global context"))


def assumptions(reply: str) -> list[str]:
    """What a `Print Assumptions` reply lists: axiom names and Coq's notes on switched-off
    checks ("f is assumed to be guarded."), for messages only (never for the verdict)."""
    found: list[str] = []
    for line in _TAG.sub("", reply).splitlines():
        m = re.match(r"^([^\W\d][\w'.]*) :", line)
        if m is not None:
            found.append(m.group(1))
        elif line.strip() and line.strip() != "Axioms:" and not line.startswith(" "):
            found.append(line.strip().rstrip("."))
    return found


def _crashed(source: str, limits: Limits, output: str) -> CheckOutcome:
    return CheckOutcome(Verdict.ERROR, source, message=(
        f"coq ran out of memory or crashed (memory limit {limits.memory_mb} MiB): "
        f"{' '.join(output.split())[-300:]}"))
