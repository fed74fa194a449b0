"""The objects that travel through the hooks, one module per subject.

Plugins receive and return these; the core owns their shape. Import each from
its module:

- `tuner.types.bundle`: what a model family's `load_model` returns
  (`ModelBundle`, `Expert`);
- `tuner.types.training`: what the training hooks return and observe
  (`LossOutput`, `AuxiliaryLoss`, `ClipFeatures`, `RunInfo`);
- `tuner.types.adapter`: trained adapter weights (`AdapterWeights`);
- `tuner.types.validation`: one validation round (`ValidationRequest`,
  `SkipLayerGuidance`, `ValidationResult`);
- `tuner.types.routes`: token routing (`TokenRouter`, `TokenRoute`).

They hold torch objects but import nothing heavy at module level, so the CLI
stays light.
"""
