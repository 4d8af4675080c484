"""The mailbox and its webhooks (issue 15): kept results, their signed, retried deliveries.

- ``signing``: the HMAC headers (what is signed, and how a receiver checks it);
- ``target``: a receiver's URL checked, its host resolved and the address connected to
  checked (``webhook.allow_private``), so that a webhook cannot reach the daemon's network;
- ``worker``: the background delivery worker over the persistent outbox;
- ``service``: ``Mailbox``, what the gateway and the control API call (keep, list, read,
  delete, re-deliver), over ``store.mailbox``.
"""

from __future__ import annotations
