"""Comparison architectures: Transformer++, and (as they land) Mamba-2, Gated DeltaNet, the MoE baseline and the
TRM x Titans-MAG hybrid."""
