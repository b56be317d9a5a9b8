"""Shared test data for the format tests: fixed digests and a hypothesis strategy for them."""

from __future__ import annotations

from hypothesis import strategies as st

from index.ids import DIGEST_SIZE, Digest

D1 = Digest("sha256", bytes(range(32)))
D2 = Digest("hmac-sha256", bytes(range(32, 64)))

digests = st.builds(
    Digest,
    st.sampled_from(["sha256", "hmac-sha256"]),
    st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE),
)
