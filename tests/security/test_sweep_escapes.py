"""The sandbox escape attempts, run as part of the security sweep.

The attempts live with the sandbox (tests/partners/tenancy/test_escapes.py); importing them
here (fixtures and the bubblewrap skip mark included) runs the same tests, not copies.
"""

from tests.partners.tenancy.test_escapes import *  # noqa: F403
