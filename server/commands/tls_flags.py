"""`scillm serve`'s TLS settings on the commands that dial a mesh (`doctor --target`, the
client verbs): given the mesh's certificate settings (the flags, or the `SCILLM_TLS_*`
variables a mesh's host already has), a command dials it as the mesh's own processes dial
each other (`Settings.client_tls`); without them, in plaintext."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so building the CLI parser stays cheap
    from scillm.clients import TlsConfig

__all__ = ["add_tls_arguments", "client_tls", "env_path"]


def env_path(name: str) -> Path | None:
    """The path in variable `name`; None when it is unset or empty."""
    return Path(os.environ[name]) if os.environ.get(name) else None


def add_tls_arguments(parser: argparse.ArgumentParser, dialed: str) -> None:
    """--tls-cert, --tls-key, --tls-client-ca, defaulting to `SCILLM_TLS_*`; `dialed` names
    what they dial ("--target")."""
    parser.add_argument("--tls-cert", type=Path, default=env_path("SCILLM_TLS_CERT"),
                        help="the mesh's PEM certificate chain, as scillm serve's (default "
                             f"$SCILLM_TLS_CERT; with --tls-key): dial {dialed} with TLS, "
                             "trusting this chain (or --tls-client-ca)")
    parser.add_argument("--tls-key", type=Path, default=env_path("SCILLM_TLS_KEY"),
                        help="PEM private key of --tls-cert (default $SCILLM_TLS_KEY)")
    parser.add_argument("--tls-client-ca", type=Path, default=env_path("SCILLM_TLS_CLIENT_CA"),
                        help="the mesh's client CA, for mutual TLS (default "
                             "$SCILLM_TLS_CLIENT_CA): trust it, and present --tls-cert")


def client_tls(args: argparse.Namespace) -> TlsConfig | None:
    """How the mesh is dialed: the TLS flags read as `scillm serve` reads them (checked
    the same way: ValueError naming the setting, OSError for a file that cannot be read),
    then as the mesh's own clients dial it. None: plaintext."""
    from ..settings import Settings

    cert, key, client_ca = (getattr(args, name, None)
                            for name in ("tls_cert", "tls_key", "tls_client_ca"))
    if cert is None and key is None and client_ca is None:
        return None
    settings = Settings(tls_cert=cert, tls_key=key, tls_client_ca=client_ca)
    settings.validate()
    return settings.client_tls()
