"""Makes `draft_lightning.models.families` importable before the package restructure lands.

Until then `draft_lightning.models` is the module models.py, which shadows the models/
folder beside it (a plain module has no `__path__`, so nothing imports under it). Giving the
module the folder as its `__path__` lets Python find models/families/*.py as it will once
models/ is a package. A no-op after the restructure: delete this file and its imports then.
"""

from pathlib import Path

import draft_lightning.models as models

if not hasattr(models, "__path__"):
    models.__path__ = [str(Path(models.__file__).with_suffix(""))]
