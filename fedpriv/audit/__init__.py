"""Empirical privacy audit: attacks run against what a fedpriv client actually sends.

- :mod:`fedpriv.audit.inversion`: gradient inversion with the cosine loss (Geiping et al. 2020)
  against a single client update (imports torch).
- :mod:`fedpriv.audit.membership`: loss-threshold membership inference (Yeom et al. 2018) and
  the advantage bound (epsilon, delta)-DP implies (numpy only at import time, so the privacy
  report can use the bound without loading torch).

Nothing is re-exported here, to keep ``import fedpriv.audit.membership`` light. Used by
``tests/security/test_attacks.py`` and meant for the privacy report's empirical-audit section.
An attack that fails is evidence, not proof: the DP accounting is the guarantee.
"""
