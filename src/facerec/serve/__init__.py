"""The face verification / identification web service (FastAPI): `create_app(model, ...)`; `facerec serve`.

Needs the `serve` extra (`pip install 'facerec[serve]'`); importing this package alone imports nothing heavy.
"""

from __future__ import annotations

from typing import Any


def create_app(model: Any, **kwargs: Any) -> Any:
    """See facerec.serve.app.create_app."""
    from facerec.serve.app import create_app as build

    return build(model, **kwargs)
