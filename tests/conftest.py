import os

from hypothesis import settings

# CPU CI: no per-example deadline (timings vary), a fixed database-free profile.
settings.register_profile("ovq", deadline=None, max_examples=40, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ovq"))
