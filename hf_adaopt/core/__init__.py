"""The library: AdaOpt and its integrations. Imports torch (and, in `callback` / `trainer`, transformers) only."""
