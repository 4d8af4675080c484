"""``studioctl bench``: a load generator for OpenAI-compatible servers and its metrics.

``metrics`` (pure functions over per-request timelines), ``thresholds`` (``--slo`` and
``--fail-if``), ``httpconn`` (the raw HTTP/1.1 connection pool), ``prompts`` (synthetic
prompts of exact token length, datasets), ``loadgen`` (arrivals and requests on one event
loop), ``report`` (the ``studioctl.bench/1`` document and the table), ``target`` (what to
measure: a URL, a running instance or a recipe, launched and evicted through the control
client), ``compare`` (the mean and spread of repeated runs, the comparison of two runs),
``provenance`` (where a run ran: recipe and hash, engine and version, GPUs and driver).
Saved runs live in ``studioctl.store.bench``.
"""
