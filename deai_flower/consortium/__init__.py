"""A consortium's set-up: silo keys, TLS certificates, SuperNode keys, the contract,
the registry and runs (``deai consortium …``), and the node-identity proof that binds a
Flower node to a registered silo.

Modules are imported where used: the identity proof is pure, the chain steps need a
node, the credentials need ``cryptography``.
"""
