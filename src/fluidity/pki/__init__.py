"""The private CA: create it, issue and revoke certificates, the CRL,
key-file permissions, and the ``fluidity certs`` command."""
