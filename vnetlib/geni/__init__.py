"""GENI interoperability: RSpec v3 documents and the Aggregate Manager API v3."""
