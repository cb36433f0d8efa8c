"""kiln: immutable infrastructure with continuous delivery built in."""

import os

__version__ = "0.1.0"

# pydantic looks for plugins in the entry points of every installed distribution when kiln's
# spec models are built: reading all that metadata is cheap on a quiet host but took 0.6 s of a
# no-op `kiln deploy` on a busy one (python -X importtime). kiln uses no pydantic plugin; a user
# who wants one can set the variable.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
