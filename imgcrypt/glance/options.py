"""The plugins' options, read from Glance's own configuration file, section ``[imgcrypt]``."""

from __future__ import annotations

from typing import Any

from imgcrypt.keys.rules import DEFAULT_DELETION_POLICY, DELETION_POLICIES, KEEP_POLICY
from imgcrypt.service.upload import UploadPolicy

GROUP = "imgcrypt"
# Seconds: a Barbican answers in well under one; the margin covers a loaded one.
KEY_MANAGER_TIMEOUT = 60.0
# What each deletion policy means, as the sample configuration shows it.
_POLICY_HELP = {
    DEFAULT_DELETION_POLICY: "the key is deleted with the image, unless another consumer "
                         "(an image or volume) still uses it",
    KEEP_POLICY: "the key outlives the image",
}


def _options() -> list[Any]:
    from oslo_config import cfg, types

    return [
        cfg.ListOpt("allowed_luks_versions", item_type=types.Integer(choices=[1, 2]),
                    default=[1],
                    help="LUKS versions imgcrypt_verify accepts. Glance's own upload "
                         "inspector and qemu accept LUKS1 only."),
        cfg.BoolOpt("require_signature", default=False,
                    help="Refuse images without an imgcrypt-mode or Glance-mode signature."),
        cfg.StrOpt("trusted_certificates", default=None,
                   help="PEM file of CA certificates a signing certificate must chain to; "
                        "unset, any certificate in the key manager is accepted (as cursive)."),
        cfg.BoolOpt("check_key", default=True,
                    help="Check that the key an encrypted image names opens its LUKS header."),
        cfg.BoolOpt("register_consumer", default=True,
                    help="Register the image as a Barbican consumer of its key, so the key "
                         "is not deleted while another image still uses it."),
        cfg.FloatOpt("key_manager_timeout", default=KEY_MANAGER_TIMEOUT, min=1.0,
                     help="Seconds the plugins wait for the key manager (castellan's Barbican "
                          "backend) to connect and then to answer each request; a key "
                          "manager that stops answering fails the import, verdict "
                          "'unchecked', instead of holding it for ever."),
        cfg.StrOpt("encrypt_key_deletion_policy", default=DEFAULT_DELETION_POLICY,
                   choices=[(policy, _POLICY_HELP[policy]) for policy in DELETION_POLICIES],
                   help="Deletion policy imgcrypt_encrypt gives the keys it orders."),
        cfg.IntOpt("encrypt_pbkdf2_iterations", default=None, min=1000,
                   help="PBKDF2 iterations of the keyslot imgcrypt_encrypt writes; unset, "
                        "benchmarked like cryptsetup (2 seconds)."),
    ]


def register(conf: Any) -> None:
    """Register the options on ``conf`` (Glance's ``cfg.CONF``) once."""
    if GROUP in conf and "require_signature" in conf[GROUP]:
        return
    conf.register_opts(_options(), group=GROUP)


def list_opts() -> list[tuple[str, list[Any]]]:
    """For oslo-config-generator (``oslo.config.opts`` entry point)."""
    return [(GROUP, _options())]


def upload_policy(conf: Any) -> UploadPolicy:
    from cryptography import x509

    group = conf[GROUP]
    trust = None
    if group.trusted_certificates:
        with open(group.trusted_certificates, "rb") as f:
            trust = tuple(x509.load_pem_x509_certificates(f.read()))
    return UploadPolicy(allowed_luks_versions=frozenset(group.allowed_luks_versions),
                        require_signature=group.require_signature, trust=trust,
                        register_consumer=group.register_consumer,
                        check_key=group.check_key, hash_algo=_glance_hash_algo(conf))


def _glance_hash_algo(conf: Any) -> str:
    """Glance's ``[DEFAULT] hashing_algorithm``: the verdict names the data it checked by the
    multihash Glance computes again when it stores the image, so both must use one."""
    from imgcrypt.digests import DEFAULT_MULTIHASH

    try:
        return str(conf.hashing_algorithm)
    except Exception:  # oslo.config's NoSuchOptError: a Glance without the option
        return DEFAULT_MULTIHASH
