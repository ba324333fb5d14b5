"""Titans (arXiv 2501.00663) and MIRAS (arXiv 2504.13173) memory architectures.

  ops.py         the memory write/read recurrence: chunk-parallel op + token-by-token reference
  memory_net.py  the memory network (Titans' MLP, MIRAS' residual x + LN(...)) and its closed-form gradients
  objectives.py  pluggable attentional biases (l2, l_p, Huber) and retentions (decay, l_q, KL)
  memory.py      NeuralMemory: projections, short conv, data-dependent gates, the op, output
  mac.py         Titans MAC block (memory as a context)
  models.py      config, LMM / MAG / MAL blocks, the TitansLM adapter
  presets.py     per-preset flavors and the registry builders
Departures from the papers are config switches with the paper's form as default: docs/faithfulness.md.
"""
