"""Catalogue-wide jobs: audit, back-fill key consumers, migrate properties, verify at rest.

Per image the jobs are small, independent and I/O-bound, so they run as one taskflow task an
image: on taskflow's parallel engine in one process (state in SQLite, resumable), or posted to
a Redis jobboard for conductors on several hosts (state in an SQL database). The modules:

- :mod:`imgcrypt.catalogue.jobs`: the jobs themselves, one image at a time, idempotent;
- :mod:`imgcrypt.catalogue.findings`: the finding codes, the records and the summary;
- :mod:`imgcrypt.catalogue.cloud`: Glance and Barbican behind bounded, retrying gates;
- :mod:`imgcrypt.catalogue.engine`: runs on the local parallel engine with persistence;
- :mod:`imgcrypt.catalogue.distributed`: the jobboard, the poster and the conductors.
"""
