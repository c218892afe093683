"""Shared fixtures. Tests need no network and no GPU; models are tiny and built in-process."""
