"""`scillm doctor`: is every part this host and its configuration need ready?

Each part is one `Check` (part, status, detail, hint) with status OK, MISSING (not
installed), FAILED (installed or configured, but not working) or SKIPPED (not asked for).
One module per kind of part:

- `_tools`: `z3`, `cvc5` (optional), `coqc`, `coqtop`, `lean`, `bubblewrap` (version *and* a
  namespace probe), `node`;
- `_redis`: `redis` (when the model config sets a Redis cache), a PING;
- `_otlp`: `otlp`, where traces go (the OTLP endpoint of OTEL_EXPORTER_OTLP_ENDPOINT) and
  whether it answers: a real gRPC call to its TraceService with a short deadline;
- `_providers`: `config` and one `provider:<model_name>` per deployment of the model config
  (key present, endpoint reachable; `GET /models` for OpenAI-compatible servers); with
  `live`, one `live:<model_name>` per model name: a one-token completion through
  `CompletionEngine`;
- `_mesh`: with a `target`, the mesh's `grpc.health.v1` entries, one per service and per
  service part (`scillm.prove.v1.ProveService/smt`,
  `scillm.codeworld.v1.CodeWorldService/bubblewrap`), so gRPC health can be read beside
  the local story; for a service the target sends to another process (a door), that
  process's entries, "at <target>". Dialed with the mesh's TLS settings when given, and a
  plaintext dial of a TLS server (or the reverse) is named as such;
- `_expect`: what `--expect` names need (`unmet`); `_report`: `collect` runs every check
  and `format_table` prints them; `_command`: the CLI (`add_arguments`, `run_doctor`);
  `_check`: `Check`, `Status` and the helpers the checks share.

Every check runs concurrently and is bounded (`timeout_s`, `live_timeout_s`); a check that
overruns is FAILED, never a hang. Secrets are never shown: a key is reported by the name of
its variable. Importing this package imports nothing heavy (the CLI parser is built from
it on every `scillm` run).
"""

from ._check import Check, Status
from ._command import add_arguments, doctor, run_doctor
from ._expect import EXPECTATIONS, unmet
from ._report import collect, format_table

__all__ = [
    "EXPECTATIONS",
    "Check",
    "Status",
    "add_arguments",
    "collect",
    "doctor",
    "format_table",
    "run_doctor",
    "unmet",
]
