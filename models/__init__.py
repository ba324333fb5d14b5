"""Architectures under study (the Titans family and MIRAS) and the building blocks shared by every model
(`models.common`)."""
