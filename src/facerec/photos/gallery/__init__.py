"""A gallery of enrolled people for open-set identification, shared safely by processes (CLI commands, the
service): an SQLite database is the source of truth, a FAISS index is derived from it.

Modules: `store` (gallery.db: identities, one row per enrolled photo; one transaction per change), `settings`
(its meta table: metric, fingerprint, index kind, version counter), `cache` (the FAISS index kinds and
`index.cache`, written atomically and rebuilt when missing or damaged), `digest` (a checksum of the stored rows
that an index cache must match), `mirror` (a process's index, kept in step with the database), `core` (`Gallery`:
enroll, remove, rename, search, reindex), `legacy` (the migration of the old gallery.json + .npy folders), `api`
(`open_for_model`, `identify`).
"""

from facerec.metrics.scoring import FAISS_HINT
from facerec.photos.gallery.api import identify, model_fingerprint, open_for_model
from facerec.photos.gallery.core import Gallery, Match
from facerec.photos.gallery.settings import FORMAT, INDEX_KINDS
from facerec.photos.gallery.store import DB_NAME

INSTALL_HINT = FAISS_HINT

__all__ = [
    "DB_NAME",
    "FORMAT",
    "INDEX_KINDS",
    "INSTALL_HINT",
    "Gallery",
    "Match",
    "identify",
    "model_fingerprint",
    "open_for_model",
]
