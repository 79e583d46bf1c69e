"""The embedded demo: a local AWS stand-in (moto) and a local instance runner."""
