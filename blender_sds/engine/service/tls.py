"""The remote worker's TLS certificate: made once in its own folder, then reused.

A team's GPU box has no name a public CA would sign, so `serve` makes a self-signed
certificate on first start (ROOT/tls/cert.pem, key.pem readable by its owner only) and
prints its SHA-256 fingerprint. Artists paste that fingerprint into the add-on, which
refuses any other certificate: trust as with an SSH host key, no CA involved. Reusing the
files across restarts keeps the fingerprint artists pinned; removing the folder makes a
new one (and every artist must be told it). A certificate from the team's own CA may be
put there instead: the fingerprint is then that certificate's.
"""
from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from ... import protocol

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALID_DAYS = 3650  # the pin, not the date, is what clients check


class TlsError(Exception):
    """The certificate cannot be made or used (the server does not start)."""


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    fingerprint: str  # 'AB:CD:...' (protocol.certificate_fingerprint)


def ensure_certificate(folder: Path) -> Certificate:
    """The certificate in `folder`, made first if it is not there (whole or not at all)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise TlsError(f"cannot create {folder}: {exc.strerror or exc}") from None
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    with _Lock(folder / ".lock"):  # two servers started at once on one root make one certificate
        if not (cert.is_file() and key.is_file()):
            _make(cert, key)
    if os.name == "posix" and key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsError(f"{key} can be read by other users: chmod 600 {key}")
    try:
        der = ssl.PEM_cert_to_DER_cert(cert.read_text(encoding="ascii"))
    except (OSError, ValueError) as exc:
        raise TlsError(f"{cert} is not a PEM certificate ({exc}); remove {folder} to make a new one "
                       "(clients must then be told its new fingerprint)") from None
    certificate = Certificate(cert, key, protocol.certificate_fingerprint(der))
    server_context(certificate)  # a key that does not match the certificate is refused now, not per connection
    return certificate


def server_context(certificate: Certificate) -> ssl.SSLContext:
    """TLS 1.2 or later with this certificate; no client certificates, no session tickets."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.num_tickets = 0  # nothing to resume; and nothing is written after the handshake unasked
    # A client's EOF is its "hang up" (the protocol's EOF, a TCP half-close): read it as the
    # end, not answered with an alert. A cut connection is a lost client either way.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        context.load_cert_chain(str(certificate.cert), str(certificate.key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{certificate.cert} and {certificate.key} cannot be used together ({exc}); remove "
                       f"{certificate.cert.parent} to make a new pair (clients must then be told its new "
                       "fingerprint)") from None
    return context


def _make(cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"blender-sds serve on {socket.gethostname()}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    _write_private(key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    _write_private(cert, certificate.public_bytes(serialization.Encoding.PEM))  # last: its presence means both


def _write_private(path: Path, data: bytes) -> None:
    """`data` at `path`, mode 0600 from the first byte, whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Lock:
    """An exclusive lock on a file (POSIX flock; elsewhere nothing)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
