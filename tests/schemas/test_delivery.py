"""The deliveries topic's record format: what is not a delivery is a BadDeliveryError."""

from __future__ import annotations

import pytest

from schemas.delivery import BadDeliveryError, decode_delivery, encode_delivery


def test_a_delivery_round_trips_with_its_entry_bytes_untouched() -> None:
    entry = b'{"id":"1","time":5,"messaging":[]}'
    delivery = decode_delivery(encode_delivery("page", 7, entry))
    assert (delivery.object, delivery.received_at, bytes(delivery.entry)) == ("page", 7, entry)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"[]",
        b'{"v":1,"object":"page","received_at":1}',
        b'{"v":1,"object":"pa\xffge","received_at":1,"entry":{}}',  # not UTF-8
    ],
)
def test_what_is_not_a_delivery_is_a_bad_delivery(value: bytes) -> None:
    with pytest.raises(BadDeliveryError, match="not a delivery"):
        decode_delivery(value)
