"""The engine routes the gateway proxies, as data: the one place that lists them.

Each :class:`Route` says how a request on it is handled: its kind (``JSON`` answered whole;
``STREAM`` JSON that may ask for ``"stream": true``; ``MULTIPART`` a ``multipart/form-data``
upload streamed through, see ``multipart.py``), where the model is named (the JSON body's
``model``; the form field ``model``; for ``/tokenize`` and ``/detokenize`` the body's
``model`` or, when absent, the only model running, as vLLM takes its one served model
then), how usage is read from the engine's answer (``OPENAI``: ``usage.prompt_tokens`` /
``completion_tokens``; ``RESPONSES``: ``usage.input_tokens`` / ``output_tokens``, in a
stream from the terminal ``response.completed`` event's ``response.usage``), the fields
checked against the tenant's ``max_output_tokens``, whether the engine's tokenizer counts
the prompt for the context cap (chat, completions, embeddings: their prompts are what
``/tokenize`` takes), and the body fields a cheap TPM estimate reads (characters / 4) on
the other routes. A route whose engine reports no token usage (audio answers report
seconds, ``/tokenize`` nothing) is counted as a request with the tokens it knows (zero).

``name`` is the metrics label (``studioctl_gateway_route_requests_total{route}``): a fixed
set, never the client's path. ``GET /v1/models/{id}`` is answered by the gateway from its
route table (like ``GET /v1/models``), not proxied.

What the engines serve (their route decorators, read in the installed packages):

========================== ===================== =====================================
route                      vLLM 0.32.0           SGLang 0.5.23
========================== ===================== =====================================
POST /v1/chat/completions  yes                   yes
POST /v1/completions       yes                   yes
POST /v1/embeddings        yes                   yes
POST /v1/responses         yes (typed events)    yes
POST /v1/rerank            yes                   yes
POST /rerank, /v2/rerank   yes                   no
POST /v1/score             yes                   yes
POST /score                yes                   no
POST /pooling              yes                   no
POST /classify             yes                   yes (also /v1/classify)
POST /v1/audio/transcriptions  yes (multipart)   yes (multipart)
POST /v1/audio/translations    yes (multipart)   no
POST /tokenize, /detokenize    yes               yes (also /v1/tokenize, /v1/detokenize)
GET /v1/models/{id}        no                    yes
========================== ===================== =====================================

A route the engine does not serve answers its own 404/405, relayed in the OpenAI error
envelope (``relay.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "BODY",
    "FORM",
    "JSON",
    "MULTIPART",
    "OPENAI",
    "POST_ROUTES",
    "RESPONSES",
    "ROUTES",
    "ROUTE_NAMES",
    "STREAM",
    "USAGE_NONE",
    "Route",
]

# kinds
JSON, STREAM, MULTIPART = "json", "stream", "multipart"
# where the model is named
BODY, FORM = "body", "form"
# how usage is read
OPENAI, RESPONSES, USAGE_NONE = "openai", "responses", "none"


@dataclass(frozen=True, slots=True)
class Route:
    """One proxied engine route (see the module docstring)."""

    name: str  # the metrics label
    path: str
    kind: str
    model_from: str = BODY
    usage: str = OPENAI
    output_fields: tuple[str, ...] = ()
    count_prompt: bool = False  # the engine's /tokenize counts it (context cap, TPM)
    prompt_fields: tuple[str, ...] = ()  # read by the TPM estimate when not counted
    default_model: bool = False  # no model named: the only model running
    index: int = 0  # its place in ROUTES (RequestContext.endpoint)
    upstream_path: bytes = b""  # path, as sent to the engine

    @property
    def streams(self) -> bool:
        return self.kind == STREAM


# The score forms vLLM takes: data_1/2, queries with documents or items, text_1/2.
_SCORE = ("data_1", "data_2", "queries", "documents", "items", "text_1", "text_2")

_TABLE = (
    # the first three keep the indices context.CHAT, COMPLETIONS, EMBEDDINGS (0, 1, 2)
    Route(
        "chat", "/v1/chat/completions", STREAM,
        output_fields=("max_completion_tokens", "max_tokens"), count_prompt=True,
    ),
    Route("completions", "/v1/completions", STREAM, output_fields=("max_tokens",),
          count_prompt=True),
    Route("embeddings", "/v1/embeddings", JSON, count_prompt=True),
    Route("responses", "/v1/responses", STREAM, usage=RESPONSES,
          output_fields=("max_output_tokens",), prompt_fields=("input", "instructions")),
    Route("rerank", "/v1/rerank", JSON, prompt_fields=("query", "documents")),
    Route("rerank", "/rerank", JSON, prompt_fields=("query", "documents")),
    Route("rerank", "/v2/rerank", JSON, prompt_fields=("query", "documents")),
    Route("score", "/v1/score", JSON, prompt_fields=_SCORE),
    Route("score", "/score", JSON, prompt_fields=_SCORE),
    Route("pooling", "/pooling", JSON, prompt_fields=("input", "messages")),
    Route("classify", "/classify", JSON, prompt_fields=("input", "messages")),
    Route("transcriptions", "/v1/audio/transcriptions", MULTIPART, model_from=FORM),
    Route("translations", "/v1/audio/translations", MULTIPART, model_from=FORM),
    Route("classify", "/v1/classify", JSON, prompt_fields=("input", "messages")),
    Route("tokenize", "/tokenize", JSON, usage=USAGE_NONE, default_model=True),
    Route("detokenize", "/detokenize", JSON, usage=USAGE_NONE, default_model=True),
    # SGLang's spellings; a vLLM answers its own 404 for them (route_not_served)
    Route("tokenize", "/v1/tokenize", JSON, usage=USAGE_NONE, default_model=True),
    Route("detokenize", "/v1/detokenize", JSON, usage=USAGE_NONE, default_model=True),
)  # fmt: skip

# Built once at import: the request path picks its route with one dictionary lookup.
ROUTES: tuple[Route, ...] = tuple(
    replace(r, index=i, upstream_path=r.path.encode()) for i, r in enumerate(_TABLE)
)
POST_ROUTES: dict[str, Route] = {r.path: r for r in ROUTES}
ROUTE_NAMES: frozenset[str] = frozenset(r.name for r in ROUTES)
MODEL_PATH = "/v1/models/"
