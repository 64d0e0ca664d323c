"""API key format: random, checksummed, hashed; a typo or a cut is caught without a lookup."""

from __future__ import annotations

import pytest

from calmesh_gateway.keys import (
    KEY_LENGTH,
    KEY_PREFIX,
    MalformedKey,
    check_key_format,
    checksum,
    generate_key,
    hash_key,
)


def test_a_new_key_is_well_formed_and_only_its_hash_and_prefix_are_kept() -> None:
    new = generate_key()
    assert new.key.startswith(KEY_PREFIX) and len(new.key) == KEY_LENGTH
    check_key_format(new.key)
    assert new.key_hash == hash_key(new.key) and new.key not in new.key_hash
    assert new.key.startswith(new.prefix) and len(new.prefix) < len(new.key) - 30


def test_keys_carry_at_least_160_random_bits() -> None:
    import math

    body_chars = KEY_LENGTH - len(KEY_PREFIX) - 6
    assert body_chars * math.log2(62) >= 160
    keys = {generate_key().key for _ in range(2000)}
    assert len(keys) == 2000


@pytest.mark.parametrize(
    ("mangle", "says"),
    [
        (lambda k: k[:-1], "too short"),
        (lambda k: k[:20], "too short"),
        (lambda k: k + "x", "too long"),
        (lambda k: k.replace(KEY_PREFIX, "cm_test_"), "not a CalMesh API key"),
        (lambda k: "sk_live_" + k[8:], "not a CalMesh API key"),
        (lambda k: k[:12] + "!" + k[13:], "characters"),
        (lambda k: k[:12] + ("A" if k[12] != "A" else "B") + k[13:], "checksum"),
        (lambda k: k[:10] + k[11] + k[10] + k[12:] if k[10] != k[11] else k[:10] + "zz" + k[12:], "checksum"),
    ],
)
def test_a_mistyped_or_truncated_key_is_refused_with_the_reason(mangle, says: str) -> None:  # type: ignore[no-untyped-def]
    key = generate_key().key
    bad = mangle(key)
    with pytest.raises(MalformedKey, match=says):
        check_key_format(bad)


def test_checksum_is_of_the_whole_key_body() -> None:
    key = generate_key().key
    body = key[:-6]
    assert checksum(body) == key[-6:]
    assert checksum(body[:-1] + ("0" if body[-1] != "0" else "1")) != key[-6:]
