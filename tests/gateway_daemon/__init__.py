"""The gateway as the daemon serves it: real daemon, stand-in engines, real HTTP and CLI."""
