"""The stack's certificate authority and the certificates of its dask scheduler, workers and clients.

Dask's workers run whatever code a connected client sends them, so the stack's dask speaks only TLS with
mutual authentication: every end presents a certificate this project's authority signed, and refuses a
peer without one (distributed's TLS contexts require the peer's certificate; `require-encryption` refuses
plain tcp://). The authority's key never leaves `.stack/tls/authority/` (mode 600, git-ignored).

Every holder of a certificate has a folder, `.stack/tls/NAME/`, of three files: `ca.pem` (the authority's
certificate), `cert.pem` and `key.pem` (mode 600). A worker or client on another host gets its folder from
`locdiff stack cert NAME` and names it in LOCDIFF_DASK_TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from locdiff_pipeline.coordination.dask_identity import Identity, load

AUTHORITY = "authority"
VALID_DAYS = 825  # what browsers accept at most for a leaf; renewed by deleting the files and running `up`


def identity(tls_folder: Path, name: str, hosts: tuple[str, ...] = ("127.0.0.1",)) -> Identity:
    """`name`'s certificate folder under `tls_folder`, issued by its authority (both made on first use)."""
    authority_key, authority_cert = _authority(Path(tls_folder) / AUTHORITY)
    folder = Path(tls_folder) / name
    if not load(folder).key.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = _new_key()
        (folder / "cert.pem").write_bytes(_issue(name, hosts, private, authority_key, authority_cert))
        (folder / "ca.pem").write_bytes((Path(tls_folder) / AUTHORITY / "ca.pem").read_bytes())
        write_private(folder / "key.pem", _pem(private))  # last: its presence says the folder is whole
    return load(folder)


def _authority(folder: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key_path, cert_path = folder / "ca-key.pem", folder / "ca.pem"
    if not (key_path.exists() and cert_path.exists()):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.parent.chmod(0o700)
        private = _new_key()
        cert_path.write_bytes(_issue("locdiff stack authority", (), private, private, None))
        write_private(key_path, _pem(private))
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner may read, from its first byte (the stack's keys and passwords)."""
    import os

    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _issue(name: str, hosts: tuple[str, ...], key, signer_key, signer_cert) -> bytes:
    """A PEM certificate for `key`, signed by `signer_key` (self-signed authority when `signer_cert` is None)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    is_authority = signer_cert is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if is_authority else signer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS if not is_authority else 10 * 365))
        .add_extension(x509.BasicConstraints(ca=is_authority, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_alternative_name(h) for h in hosts]), False)
    return builder.sign(signer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _alternative_name(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
