"""Speculative decoding for the torch engine: drafters (one module each), verification that keeps the
target's distribution, and SpecDec++'s adaptive candidate length."""
