"""C2PA content credentials on the PNGs aigc writes, and reading them back (c2pa-python, the C2PA
reference implementation's Python binding: https://github.com/contentauth/c2pa-python).

Formats layer: knows the C2PA manifest, certificates and PNG bytes; knows no model.

Each PNG gets a signed manifest that says it was made by a trained model (the IPTC digital
source type ``trainedAlgorithmicMedia``, C2PA 2.1, section 18.6.4.1), with the model, step, seed
and settings in a ``c2pa.actions`` "created" action and an ``org.aigc.generation`` assertion
(``{"provenance": JSON text}``, the PNG's ``aigc:provenance`` chunk).
It is signed with the certificate and key the user names (``AIGC_C2PA_CERT`` and
``AIGC_C2PA_KEY``: PEM files, the certificate chain leaf first, an ES256 / ES384 / Ed25519 key)
or, without them, with a development chain made on first use in ``AIGC_C2PA_DIR`` (default
``~/.local/share/aigc/c2pa``): a local CA and a leaf it signs (the library refuses a lone
self-signed certificate). A development signature proves the file was not changed since aigc
signed it on this machine; it is not trusted by anyone else, and the reader says so.
"""

from __future__ import annotations

import datetime
import fcntl
import io
import json
import os
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from aigc.atomic import write_private
from aigc.errors import AigcError
from aigc.version import __version__

MAX_IMAGE_BYTES = 256 * 2**20
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.aigc.generation"
_lock = threading.Lock()
_signer_files: tuple[bytes, bytes, str] | None = None  # (chain PEM, key PEM, where from)


def credentials_dir() -> Path:
    """Where the development chain lives (``AIGC_C2PA_DIR``, default ``~/.local/share/aigc/c2pa``)."""
    env = os.environ.get("AIGC_C2PA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "aigc" / "c2pa"


def _algorithm(key_pem: bytes, where: str):
    """The c2pa signing algorithm of a PEM private key."""
    import c2pa
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    try:
        key = load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as e:
        raise AigcError(f"{where}: not an unencrypted PEM private key ({e})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return c2pa.C2paSigningAlg.ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return c2pa.C2paSigningAlg.ES256 if key.curve.name == "secp256r1" else c2pa.C2paSigningAlg.ES384
    raise AigcError(f"{where}: a {type(key).__name__}; expected an EC P-256 / P-384 or Ed25519 key")


def _check_folder(folder: Path) -> None:
    """Refuse a credentials folder that is a link, someone else's, or writable by others."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise AigcError(f"{folder}: the C2PA credentials folder is a link or not a folder; refusing to use it")
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise AigcError(f"{folder}: the C2PA credentials folder belongs to another user or others may write to "
                        "it; refusing to keep a signing key there (chmod 700, or set AIGC_C2PA_DIR)")


def _read_private(path: Path) -> bytes | None:
    """The bytes of ``path`` (not followed if a link), or None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AigcError(f"{path}: cannot read the development certificate or key ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _dev_chain(folder: Path) -> tuple[bytes, bytes]:
    """The development chain (leaf then CA, PEM) and the leaf's key, made in ``folder`` when missing
    (under a lock, so two processes starting at once make one chain)."""
    _check_folder(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_folder(folder)
    fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        chain, key = _read_private(folder / "dev-chain.pem"), _read_private(folder / "dev-key.pem")
        if chain is not None and key is not None:
            return chain, key
        if chain is not None or key is not None:
            raise AigcError(f"{folder}: holds only half of the development chain (dev-chain.pem / dev-key.pem); "
                            "remove the folder to make a new one")
        return _make_dev_chain(folder)


def _make_dev_chain(folder: Path) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aigc development CA (local, untrusted)"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aigc user")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aigc development signer (local, untrusted)"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aigc user")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(leaf_name).issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain_pem = leaf.public_bytes(pem) + ca.public_bytes(pem)
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(folder / "dev-key.pem", key_pem)  # 0600 from the first byte
    write_private(folder / "dev-chain.pem", chain_pem)
    print(f"note: made a development certificate chain for C2PA content credentials in {folder}; images are "
          "signed with it (set AIGC_C2PA_CERT and AIGC_C2PA_KEY to sign with your own certificate)", file=sys.stderr)
    return chain_pem, key_pem


def signer_files() -> tuple[bytes, bytes, str]:
    """(certificate chain PEM, private key PEM, "user" or "development"), read once per process.

    Raises:
        AigcError: only one of AIGC_C2PA_CERT / AIGC_C2PA_KEY set, or a file that cannot be read.
    """
    global _signer_files
    with _lock:
        if _signer_files is None:
            cert, key = os.environ.get("AIGC_C2PA_CERT"), os.environ.get("AIGC_C2PA_KEY")
            if bool(cert) != bool(key):
                raise AigcError("set both AIGC_C2PA_CERT (the certificate chain, PEM) and AIGC_C2PA_KEY (its "
                                "private key, PEM), or neither (a development certificate is used)")
            if cert:
                try:
                    _signer_files = (Path(cert).read_bytes(), Path(key).read_bytes(), "user")
                except OSError as e:
                    raise AigcError(f"{e.filename}: cannot read the signing certificate or key ({e.strerror})") from None
            else:
                _signer_files = (*_dev_chain(credentials_dir()), "development")
        return _signer_files


def manifest(info: dict) -> dict:
    """The C2PA manifest definition of one generated image described by ``info`` (model, step, seed, ...)."""
    agent = {"name": "aigc", "version": __version__}
    return {
        "claim_generator_info": [agent],
        "title": str(info.get("title", "generated image")),
        "assertions": [
            {"label": "c2pa.actions.v2",
             "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": TRAINED,
                                   "softwareAgent": agent,
                                   "parameters": {"description": "generated by aigc"}}]}},
            # the settings as one JSON text (the library stores a list of small integers as a byte string)
            {"label": ASSERTION, "data": {"provenance": json.dumps(info, ensure_ascii=False, default=str)}},
        ],
    }


def sign_png(png: bytes, info: dict) -> bytes:
    """PNG bytes -> the same image with a signed C2PA manifest for ``info`` embedded.

    Raises:
        AigcError: the certificate or key is unusable, or the library refuses to sign (its reason).
    """
    import c2pa
    chain, key, where = signer_files()
    alg = _algorithm(key, os.environ.get("AIGC_C2PA_KEY") or "the development key")
    out = io.BytesIO()
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg, chain, key, None))
        context = c2pa.Context(c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
        with c2pa.Builder(json.dumps(manifest(info)), context) as builder:  # no thumbnail: 3 KB stays 3 KB
            builder.sign(signer, "image/png", io.BytesIO(png), out)
    except c2pa.C2paError as e:
        raise AigcError(f"C2PA signing failed with the {where} certificate: {e}") from None
    return out.getvalue()


def _check_image(path: Path, data: bytes, mime: str) -> None:
    """Raises AigcError unless ``data`` decodes as an image of the format its name says."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            if Image.MIME.get(im.format) != mime:
                raise AigcError(f"{path}: a {im.format} image named .{path.suffix.lstrip('.')}")
            im.verify()
    except AigcError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds (truncated, bomb, syntax)
        raise AigcError(f"{path}: not a readable {mime.split('/')[1].upper()} image ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'undecodable'})") from None


@dataclass
class Credentials:
    """What :func:`read_credentials` found in an image.

    Attributes:
        state: "none" (no manifest), "valid" (the signature and the image's hashes check), or "invalid".
        problems: the validator's failure codes and explanations (empty when valid).
        generated: the manifest says a trained model made it (``trainedAlgorithmicMedia``).
        generation: the ``org.aigc.generation`` assertion (model, step, seed, settings), if any.
        signer: the certificate's issuer and common name.
        manifest: the active manifest as JSON.
    """

    state: str
    problems: list[str]
    generated: bool = False
    generation: dict | None = None
    signer: str = ""
    manifest: dict | None = None


def read_credentials(path: str | Path) -> Credentials:
    """Read and verify the C2PA manifest of an image file (PNG, JPEG, WebP, ...).

    Raises:
        AigcError: the file cannot be read or is not an image format the library knows.
    """
    import c2pa
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(suffix)
    if mime is None:
        raise AigcError(f"{path}: a .{suffix} file; expected an image (.png, .jpg, .jpeg, .webp)")
    if not path.is_file():
        raise AigcError(f"{path}: no such image file")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise AigcError(f"{path}: {path.stat().st_size:,} bytes; images over {MAX_IMAGE_BYTES:,} bytes are not read")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AigcError(f"{path}: cannot read ({e.strerror})") from None
    _check_image(path, data, mime)
    try:
        with c2pa.Reader(mime, io.BytesIO(data)) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as e:
        text = str(e)
        if "ManifestNotFound" in text or "JumbfNotFound" in text or "no JUMBF" in text.lower():
            return Credentials("none", [])
        return Credentials("invalid", [" ".join(text.split())])
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    problems = [f"{s.get('code')}: {s.get('explanation', '')}".strip()
                for s in store.get("validation_status", []) or []]
    generation, generated = None, False
    for a in active.get("assertions", []):
        data = a.get("data") if isinstance(a, dict) else None
        if not isinstance(data, dict):
            continue
        if a.get("label") == ASSERTION:
            try:
                generation = json.loads(data.get("provenance", ""))
            except (TypeError, ValueError):
                generation = None
            if not isinstance(generation, dict):
                generation = None
                problems.append(f"{ASSERTION}: not the JSON object aigc writes")
        if str(a.get("label", "")).startswith("c2pa.actions") and isinstance(data.get("actions"), list):
            generated |= any(isinstance(x, dict) and x.get("digitalSourceType") == TRAINED for x in data["actions"])
    sig = active.get("signature_info", {})
    signer = ", ".join(str(x) for x in (sig.get("issuer", ""), sig.get("common_name", "")) if x)
    signer = "".join(ch if ch.isprintable() else "?" for ch in signer)  # a certificate's name is the signer's text
    serious = [p for p in problems if not p.startswith("signingCredential.untrusted")]
    return Credentials("invalid" if serious else "valid", problems, generated, generation, signer, active)
