"""TLS on both doors, and mutual TLS, with certificates made by openssl for the test."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from meshutil import mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient, TlsConfig

REQUEST = {"model": "echo/x", "messages": [{"role": "user", "content": "over tls"}]}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(root: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=scillm-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=root)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=root)
        (root / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=root)
    # The server's chain file carries the CA too, so the mesh's own clients can verify it.
    (root / "server-chain.pem").write_text((root / "server.pem").read_text()
                                           + (root / "ca.pem").read_text())
    return root


async def test_tls_on_grpc_and_http(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    running = start_mesh(mesh_settings(tmp_path, services=("completion",),
                                       tls_cert=pki / "server-chain.pem",
                                       tls_key=pki / "server.key"))
    try:
        tls = TlsConfig.from_files(ca=str(pki / "ca.pem"))
        async with ScillmClient(running.grpc_target, tls=tls) as client:
            reply = await client.completion.create(REQUEST, timeout=20)
            assert reply.choices[0].message.content[0].text == "over tls"
        async with ScillmClient(running.grpc_target) as plaintext:
            with pytest.raises(RPCError) as info:
                await plaintext.completion.create(REQUEST, timeout=5)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
        url = f"https://127.0.0.1:{running.mesh.http_port}/v1/chat/completions"
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        async with httpx.AsyncClient(verify=context, timeout=20) as http:
            resp = await http.post(url, json=REQUEST)
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"] == "over tls"
    finally:
        running.stop()


async def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    running = start_mesh(mesh_settings(tmp_path, services=("completion",),
                                       tls_cert=pki / "server-chain.pem",
                                       tls_key=pki / "server.key",
                                       tls_client_ca=pki / "ca.pem"))
    try:
        anonymous = TlsConfig.from_files(ca=str(pki / "ca.pem"))
        async with ScillmClient(running.grpc_target, tls=anonymous) as client:
            with pytest.raises(RPCError):
                await client.completion.create(REQUEST, timeout=5)
        with_cert = TlsConfig.from_files(ca=str(pki / "ca.pem"), key=str(pki / "client.key"),
                                         cert=str(pki / "client.pem"))
        async with ScillmClient(running.grpc_target, tls=with_cert) as client:
            reply = await client.completion.create(REQUEST, timeout=20)
            assert reply.choices[0].message.content[0].text == "over tls"
        # The shim reaches gRPC with the mesh's own certificate (mutual TLS inside the mesh).
        url = f"https://127.0.0.1:{running.mesh.http_port}/v1/chat/completions"
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        # An HTTP client that trusts the server but has no certificate is refused in the
        # handshake (README: mutual TLS); the same client with one is served.
        async with httpx.AsyncClient(verify=context, timeout=20) as http:
            # TLS 1.3: the refusal arrives as the alert or as the connection closing,
            # depending on timing; either way the request is never served.
            with pytest.raises((httpx.ConnectError, httpx.ReadError,
                                httpx.RemoteProtocolError)):
                await http.post(url, json=REQUEST)
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        async with httpx.AsyncClient(verify=context, timeout=20) as http:
            assert (await http.post(url, json=REQUEST)).status_code == 200
    finally:
        running.stop()


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    from scillm.server.settings import Settings

    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ValueError, match="go together"):
        Settings.from_env({}, tls_cert=cert)
    with pytest.raises(ValueError, match="does not exist"):
        Settings.from_env({}, tls_cert=cert, tls_key=tmp_path / "absent.key")
