"""Deployment on Flower's deployment engine: SuperLink and SuperNodes over TLS, node
authentication, signed key bundles, sealed HE-key relay, and the process management behind
``fedpriv keys``, ``fedpriv server``, ``fedpriv client`` and ``fedpriv run``.

Modules: :mod:`~fedpriv.deploy.pki` (CA, certificates, node and dealer keys),
:mod:`~fedpriv.deploy.bundle` (signed manifests), :mod:`~fedpriv.deploy.seal` (sealed HE
secret), :mod:`~fedpriv.deploy.dealer` (``keys init``/``add-node``),
:mod:`~fedpriv.deploy.server` / :mod:`~fedpriv.deploy.client` / :mod:`~fedpriv.deploy.run`
(the three commands), :mod:`~fedpriv.deploy.apps` and :mod:`~fedpriv.deploy.relay` (the Flower
apps a deployment runs), :mod:`~fedpriv.deploy.clientapp` and :mod:`~fedpriv.deploy.warm` (what
executes on a device). Key-holder evaluation is :func:`fedpriv.runs.evaluate_run`, shared with
simulation. See docs/deployment.md.
"""
