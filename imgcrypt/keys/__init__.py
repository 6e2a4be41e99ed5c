"""Keys: a key manager's secrets, the adapters that fetch and store them (a local keystore,
Barbican, castellan), and the rules that turn a secret into a LUKS passphrase and into image
properties."""
