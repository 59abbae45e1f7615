import os
import tempfile

from hypothesis import settings

# CPU CI: no per-example deadline (timings vary), a fixed database-free profile.
settings.register_profile("ovq", deadline=None, max_examples=40, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ovq"))

# Sessions persist to $OVQ_STORE by default: keep every test's snapshots out of the home directory.
os.environ.setdefault("OVQ_STORE", tempfile.mkdtemp(prefix="ovq-test-store-"))
