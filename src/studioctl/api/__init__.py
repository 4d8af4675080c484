"""The control API's shared vocabulary: request models (``models``, pydantic, server and
client), answer shapes (``types``, TypedDicts: the CLI's fast path reads them without
importing pydantic), and the bounded parameter checks both are built from (``params``)."""
