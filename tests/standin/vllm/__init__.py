"""Part of the engine stand-in (tests only): not the real package."""
