"""Certificates for the TLS tests, made with the `openssl` command line tool.

A `Pki` is a throw-away CA in a directory; `issue` signs a certificate for some names (DNS
names and IP addresses) with it. Keys are EC P-256, unencrypted PKCS#8 unless a password is
given; certificates are valid for two days.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    tool = shutil.which("openssl")
    assert tool is not None, "the openssl command line tool is needed (Debian's openssl)"
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args[:2])} failed: {done.stderr}"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    def keystore(self, path: Path) -> Path:
        """Key, then certificate, in one PEM file (a Kafka PEM keystore)."""
        path.write_text(self.key.read_text() + self.cert.read_text())
        return path


@dataclass(frozen=True)
class Pki:
    directory: Path
    name: str

    @property
    def ca(self) -> Path:
        return self.directory / f"{self.name}-ca.pem"

    @property
    def _ca_key(self) -> Path:
        return self.directory / f"{self.name}-ca.key"

    @classmethod
    def create(cls, directory: Path, name: str) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(directory, name)
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(pki._ca_key), "-out", str(pki.ca), "-days", "2",
            "-subj", f"/CN={name} test CA",
        )  # fmt: skip
        return pki

    def issue(self, name: str, *names: str, key_password: str | None = None) -> Issued:
        """A certificate for `names` (the subject alternative names), for servers and
        clients alike; its key encrypted with `key_password` if one is given."""
        base = self.directory / f"{self.name}-{name}"
        key, csr, cert, ext = (base.with_suffix(s) for s in (".key", ".csr", ".pem", ".ext"))
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        sans = ",".join(f"{'IP' if _is_ip(n) else 'DNS'}:{n}" for n in names)
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            + (f"subjectAltName={sans}\n" if sans else "")
        )
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self._ca_key),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext),
        )  # fmt: skip
        if key_password is not None:
            encrypted = base.with_suffix(".enc.key")
            _openssl(
                "pkcs8", "-topk8", "-in", str(key), "-out", str(encrypted),
                "-v2", "aes-256-cbc", "-passout", f"pass:{key_password}",
            )  # fmt: skip
            key = encrypted
        return Issued(cert, key)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
