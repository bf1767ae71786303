"""Settings for the whole suite.

Hypothesis's per-example deadline is a timing assertion: on a shared two-core machine an XLSX round trip
or a signature check can take longer than 200 ms now and then, which fails a correct test. Performance is
measured by `make bench`, so the deadline is off everywhere.
"""

from hypothesis import settings

settings.register_profile("carbon-gateway", deadline=None)
settings.load_profile("carbon-gateway")
