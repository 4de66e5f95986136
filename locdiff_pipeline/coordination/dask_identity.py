"""One end of a dask link on mutual TLS: a certificate, its key and the authority that signed them.

Read by whoever connects to a team's dask (the executor, its workers) from a certificate folder of three
files, `ca.pem`, `cert.pem` and `key.pem`; the stack's authority issues the folders (stack/certificates.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    """A certificate, its private key and the authority that signed it: what one end of a dask link presents."""

    authority: Path
    certificate: Path
    key: Path

    def security(self):
        """distributed's Security for a client (or the executor) holding this identity: TLS only."""
        from distributed import Security

        return Security(
            tls_ca_file=str(self.authority),
            tls_client_cert=str(self.certificate),
            tls_client_key=str(self.key),
            require_encryption=True,
        )

    def server_arguments(self) -> list[str]:
        """The `dask scheduler` / `dask worker` flags that make it present this identity (paths only)."""
        return ["--tls-ca-file", str(self.authority), "--tls-cert", str(self.certificate), "--tls-key", str(self.key)]


def load(folder: Path) -> Identity:
    """The identity in a certificate folder (LOCDIFF_DASK_TLS): its ca.pem, cert.pem and key.pem."""
    folder = Path(folder)
    return Identity(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
