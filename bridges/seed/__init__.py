"""Translators for the seed's HTTP envelopes (CodeWorld, Agent, Certainly) into protos."""
