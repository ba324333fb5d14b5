"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024): `ops` (the gated delta rule, chunked + naive), `layer` (the
token mixer), `model` (the LM and its presets)."""
