"""``relaycast serve --self-signed``: a local certificate authority and a server certificate
from it, for HTTPS on a LAN without a public name (made with the ``cryptography`` package).

A phone or laptop on the network can then open the studio over ``https://`` and capture
once it trusts the CA (browsers give the camera only to secure contexts).  Kept in the
data folder's ``tls/``:

* ``relaycast-ca.pem`` — the CA certificate to install on the devices (10 years; P-256,
  ``basicConstraints CA:true, pathlen 0``, key usage certificate and CRL signing only);
  its key ``relaycast-ca.key`` (mode 0600) never leaves the machine;
* ``server.pem`` + ``server.key`` (0600) — the server's certificate (397 days, the CA/B
  Forum's most for TLS server certificates; P-256, ``serverAuth``) for ``localhost``, this
  host's name, ``127.0.0.1``, ``::1``, the listen address and the host name's addresses.

A later start reuses them, and makes a new server certificate (same CA: nothing to install
again) when it expires within 30 days or does not name every current name and address.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = datetime.timedelta(days=30)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DevCertificate:
    """Paths of the files (see the module docstring) and the names the certificate holds."""

    ca: Path
    cert: Path
    key: Path
    names: tuple[str, ...]
    made: bool
    """A new server certificate was made by this call."""

    def instructions(self) -> str:
        """What to tell the user: where the CA is and how to trust it."""
        return "\n".join([
            f"  TLS: development certificate {self.cert} for {', '.join(self.names)}"
            + (" (new)" if self.made else ""),
            f"  To broadcast from another device, trust this CA there once: {self.ca}",
            "    Chrome/Edge: Settings → Privacy and security → Security → Manage certificates → "
            "Authorities → Import;",
            "    Firefox: Settings → Privacy & Security → Certificates → View Certificates → Authorities → "
            "Import; Android: Settings → Security → Encryption & credentials → Install a certificate → "
            "CA certificate;",
            "    iOS: open the file, install the profile, then Settings → General → About → "
            "Certificate Trust Settings → on.",
        ])


def local_names(host: str) -> tuple[list[str], list[Address]]:
    """DNS names and IP addresses this machine answers to: ``localhost``, the host name (and
    its fully qualified form), loopback, ``host`` when it is a specific address or name, and
    the addresses the host name resolves to (no network traffic: the local resolver)."""
    names = ["localhost"]
    addresses: list[Address] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    hostname = socket.gethostname()
    for name in (hostname, socket.getfqdn(hostname)):
        if name and name not in names and not _is_address(name):
            names.append(name)
    candidates = [host] if host not in ("", "0.0.0.0", "::") else []
    try:
        candidates += [str(info[4][0]) for info in socket.getaddrinfo(hostname, None, type=socket.SOCK_STREAM)]
    except OSError:
        pass
    for candidate in candidates:
        if _is_address(candidate):
            address = ipaddress.ip_address(candidate.split("%")[0])
            if address not in addresses and not address.is_unspecified:
                addresses.append(address)
        elif candidate not in names:
            names.append(candidate)
    return names, addresses


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True


def ensure_dev_certificate(folder: Path, host: str, *, extra_names: tuple[str, ...] = (),
                           now: datetime.datetime | None = None) -> DevCertificate:
    """The CA and server certificate in ``folder`` (made or renewed as the module docstring
    says) for :func:`local_names` of ``host`` and ``extra_names`` (DNS names)."""
    now = now or datetime.datetime.now(datetime.UTC)
    folder.mkdir(parents=True, exist_ok=True)
    ca_path, ca_key_path = folder / "relaycast-ca.pem", folder / "relaycast-ca.key"
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    names, addresses = local_names(host)
    names += [name for name in extra_names if name not in names]
    if ca_path.is_file() and ca_key_path.is_file():
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or ca.not_valid_after_utc - RENEW_BEFORE < now:
            ca, ca_key = _new_ca(now)
        else:
            ca_key = loaded
    else:
        ca, ca_key = _new_ca(now)
    _write(ca_key_path, ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), private=True)
    _write(ca_path, ca.public_bytes(serialization.Encoding.PEM))
    shown = tuple(names) + tuple(str(a) for a in addresses)
    if cert_path.is_file() and key_path.is_file() and _still_good(cert_path, ca, names, addresses, now):
        return DevCertificate(ca_path, cert_path, key_path, shown, made=False)
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(a) for a in addresses]
    cert = (
        certificate_builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1] if len(names) > 1 else names[0])]),
            ca.subject, key.public_key(), now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    return DevCertificate(ca_path, cert_path, key_path, shown, made=True)


def certificate_builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
                        not_before: datetime.datetime, not_after: datetime.datetime) -> x509.CertificateBuilder:
    """An X.509 v3 certificate of ``public_key`` for ``subject`` by ``issuer`` (the same name:
    self-signed), a random serial number (RFC 5280 §4.1.2.2), valid ``not_before`` to
    ``not_after``; extensions and the signature are the caller's."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _new_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"relaycast development CA ({socket.gethostname()})")])
    cert = (
        certificate_builder(name, name, key.public_key(), now - datetime.timedelta(minutes=5),
                            now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _still_good(cert_path: Path, ca: x509.Certificate, names: list[str], addresses: list[Address],
                now: datetime.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca)  # a CA made again has the same name, not the same key
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return (cert.not_valid_after_utc - RENEW_BEFORE > now
            and set(names) <= set(san.get_values_for_type(x509.DNSName))
            and set(addresses) <= set(san.get_values_for_type(x509.IPAddress)))


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` (0600 when ``private``: created so, never world-readable)."""
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
