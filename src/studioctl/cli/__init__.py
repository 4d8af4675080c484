"""The ``studioctl`` command: typer commands that parse, call one library or client
function, and render. No business logic lives here."""
