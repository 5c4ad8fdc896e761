"""An atheris (libFuzzer) harness for the gateway's admission of a webhook body.

Run by ``test_atheris.py``; by hand::

    .venv/bin/python tests/producers/webhook/fuzz_admit.py -runs=100000 CORPUS_DIR

The first input byte picks how the rest is presented: signed with the app secret (so the
parser and the mapper see it), or with a signature header taken from the input itself.
Every accepted record must decode, with the envelope's full validation, to an envelope
that writes the same bytes; admitting the body again must give the same decision.
Any exception, or an outcome that breaks the rules below, is a crash for libFuzzer.
With ``CONVSYNC_FUZZ_SELFCHECK=1`` the harness breaks a rule on purpose, so a test can
prove that a broken rule is reported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

with atheris.instrument_imports(include=["producers", "schemas"]):
    from producers.webhook.admit import Accepted, Refused, admit
    from producers.webhook.deliveries import map_delivery
    from producers.webhook.signature import sign
    from schemas.envelope import Envelope

SECRET = b"fuzz-app-secret"
MAX_RECORD = 256 * 1024
SELFCHECK = os.environ.get("CONVSYNC_FUZZ_SELFCHECK") == "1"


class RuleBrokenError(AssertionError):
    """The admission broke one of its rules for this input."""


def check(data: bytes) -> None:
    """Admit one fuzzed request and check the outcome against the gateway's rules."""
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode % 4:
        header: str | None = sign(SECRET, body)
    else:
        split = body.find(b"\n")
        raw_header, body = (body[:split], body[split + 1 :]) if split >= 0 else (b"", body)
        header = raw_header.decode("latin-1") or None
    decision = admit(SECRET, body, header, max_record_bytes=MAX_RECORD)
    signed = header == sign(SECRET, body)
    if isinstance(decision, Refused):
        if decision.status not in (400, 403, 413):
            raise RuleBrokenError(f"refused with {decision.status}")
        if signed and decision.status == 403:
            raise RuleBrokenError("a correctly signed body refused as unsigned")
        return
    if not isinstance(decision, Accepted):
        raise RuleBrokenError(f"unexpected decision {decision!r}")
    if not signed:
        raise RuleBrokenError("an unsigned body was accepted")
    if SELFCHECK and decision.records:
        raise RuleBrokenError("selfcheck: every accepted body with events is a crash")
    for delivery_key, delivery in decision.records:
        # The mapper's side of the same rules: every delivery maps, every event
        # round-trips to its envelope, keyed by its page.
        mapped = map_delivery(delivery)
        if any(f.error_type != "EventTooLarge" for f in mapped.failures):
            raise RuleBrokenError(f"a delivery did not map: {mapped.failures}")
        for kind, (key, value) in zip(mapped.kinds, mapped.records, strict=True):
            env = Envelope.from_bytes(value)
            if key != env.page_id.encode() or env.kind != kind or env.to_bytes() != value:
                raise RuleBrokenError("a record does not round-trip to its envelope")
            if key != delivery_key:
                raise RuleBrokenError("an event is not keyed as its delivery")
    if decision != admit(SECRET, body, header, max_record_bytes=MAX_RECORD):
        raise RuleBrokenError("the same body admitted twice gave two decisions")


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
