"""Settings of the Prove engine: read once at start-up into a frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..jail import JailSettings
from ._types import Limits

__all__ = ["ProveSettings"]


@dataclass(frozen=True)
class ProveSettings:
    """Everything a `ProveEngine` needs to know before it starts."""

    #: Warm processes the smt backend keeps per solver: `z3 -in` (prewarmed with
    #: `prewarm`), and cvc5 (started when an item first asks for it).
    smt_pool_size: int = 2
    #: Warm `coqtop` processes kept by the coq backend.
    coq_pool_size: int = 2
    #: Concurrent `lean` processes (Lean runs one process per item).
    lean_pool_size: int = 2
    #: Start the warm pools in `start()` rather than on first use.
    prewarm: bool = False
    #: Items of one batch checked at the same time (across backends).
    max_concurrency: int = 8
    #: Limits applied to items that carry none.
    default_limits: Limits = field(default_factory=Limits)
    #: The most a request may ask for, per item: over either, the batch is refused
    #: (INVALID_ARGUMENT naming the field), so no caller sets a prover's memory or time
    #: past what the host can give.
    max_limits: Limits = field(default_factory=lambda: Limits(timeout_s=300.0,
                                                              memory_mb=8192))
    #: Most generate -> check -> repair rounds a request may ask for per item.
    max_formalize_attempts: int = 10
    #: Most seconds one item's generate -> check -> repair rounds may take together, model
    #: calls and prover runs included (each prover run is also held to the item's limits);
    #: past it, or past the call's deadline, the item ends TIMEOUT saying how many rounds
    #: finished, with the last one's diagnostics.
    formalize_max_s: float = 600.0
    #: Largest batch accepted, items.
    max_batch_items: int = 10_000
    #: Largest formal text (preamble + imports + statement + proof) accepted, bytes.
    max_source_bytes: int = 256 * 1024
    #: Verdicts kept by the in-memory cache; 0 disables caching.
    cache_size: int = 10_000
    #: z3 executable.
    z3_path: str = "z3"
    #: cvc5 executable: the smt backend's second solver, for items whose `smt_solver` is
    #: "cvc5" or "both" (Debian 12: `apt-get install cvc5`); without it such items are
    #: refused (`BackendUnavailable`) and z3 items run as ever.
    cvc5_path: str = "cvc5"
    #: coqtop executable (warm workers) and coqc (diagnostics of failed items).
    coqtop_path: str = "coqtop"
    coqc_path: str = "coqc"
    coqchk_path: str = "coqchk"
    #: Also have the independent kernel checker `coqchk` re-check every Coq item judged
    #: PROVED (compiled to a .vo in the jail): a defence against gaps in `Print
    #: Assumptions`, at about 0.5 s per proved item.
    coq_kernel_check: bool = False
    #: Libraries `Require`d (not imported) once per warm coqtop, so items that
    #: `Require Import` them do not pay the load each time.
    coq_warm_libraries: tuple[str, ...] = ("Coq.micromega.Lia", "Coq.Arith.Arith")
    #: lean executable; with `lean_project_dir`, `lake env lean` runs in that directory.
    lean_path: str = "lean"
    lake_path: str = "lake"
    lean_project_dir: Path | None = None
    #: Directory for per-worker scratch files; the system temp dir when None.
    scratch_dir: Path | None = None
    #: Seconds a warm prover gets to start (load its prelude) before it is ERROR.
    start_timeout_s: float = 30.0
    #: Items a warm coqtop checks before it is replaced (bounds memory growth).
    coq_worker_items: int = 500
    #: How provers are jailed (bubblewrap when it works; see `scillm.server.jail`).
    jail: JailSettings = field(default_factory=JailSettings)
