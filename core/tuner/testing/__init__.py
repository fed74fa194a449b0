"""The testing kit: what tuner's own tests use and what an outside family or feature tests itself with.

None of it runs training: ``import tuner`` and ``tuner train`` never load it
(``tuner demo`` takes `tiny` through a family's tiny-model builder). Its
modules, by what they hold:

- `contract`: `FamilyContract`, the conformance suite a family runs on itself;
- `fixtures`: pytest fixtures (``pytest_plugins = ["tuner.testing.fixtures"]`` in a ``conftest.py``);
- `runs`: a run folder on a family's tiny model, ``tuner`` in-process, what a run logged;
- `tiny`: parts for a family's tiny model (small tokenizers, random weights at real width);
- `toy`: the toy family, a model in milliseconds for tests of the core and of features;
- `toy_model`: the toy family's model (the one part of it that imports torch);
- `config_fuzz`: hypothesis strategies that damage a config (needs the ``test`` extra).

Import from the module (``from tuner.testing.contract import FamilyContract``):
this package imports none of them, so taking one never loads pytest,
hypothesis or torch for another.
"""

__all__ = ["config_fuzz", "contract", "fixtures", "runs", "tiny", "toy", "toy_model"]
