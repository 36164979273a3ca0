"""The malicious-package corpus, run as part of the security sweep.

The cases and tests live with the package reader (tests/partners/packaging/); importing them
here runs the same tests, so the sweep cannot drift from them.
"""

from tests.partners.packaging.test_packaging_corpus import *  # noqa: F403
